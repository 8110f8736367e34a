# One image for every part of the service: `hotdog serve` (the default command),
# `hotdog worker` and `hotdog migrate` (see docker-compose.yml).
# PyPI's Linux torch wheels bundle CUDA; the worker uses the GPU the container is given.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DATA_DIR=/data \
    TORCH_HOME=/data/torch

RUN useradd --create-home --uid 1000 hotdog \
    && mkdir -p /data /app \
    && chown hotdog:hotdog /data /app
WORKDIR /app

# The heavy, rarely changing layer first: torch and torchvision at the pinned versions.
COPY constraints.txt ./
RUN pip install -c constraints.txt torch torchvision

COPY --chown=hotdog:hotdog pyproject.toml README.md ./
COPY --chown=hotdog:hotdog app ./app
COPY --chown=hotdog:hotdog worker ./worker
COPY --chown=hotdog:hotdog migrations ./migrations
# Editable: the code (and migrations/, which the package finds next to it) stays in /app.
RUN pip install -c constraints.txt -e '.[onnx]'

USER hotdog
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
    CMD python -c "import urllib.request, sys; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)" || exit 1
ENTRYPOINT ["hotdog"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
