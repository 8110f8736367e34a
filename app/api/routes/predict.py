"""``/predict``: classify photos with the active model or a named one.

The handler is ``async``: decoding and the forward pass run on threads, and the images of
concurrent requests share forward passes (``app.api.serving``). It takes no SessionDep: the
model is looked up (in a session of its own) only when the lookup cache has no answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import torch
from fastapi import APIRouter, File, Form, UploadFile
from fastapi.concurrency import run_in_threadpool

from app.api.deps import GUARDED, StateDep
from app.api.errors import Unprocessable
from app.api.schemas import ERRORS, PredictOut
from app.api.serving import LoadedModel
from app.api.state import State
from app.models import service as models

router = APIRouter(tags=["predict"], dependencies=GUARDED, responses=ERRORS)


def _find(state: State, model: str | None) -> tuple[str, Path]:
    with state.session() as session:
        return models.find(session, model)


def _prepare(state: State, model: str | None, files: list[UploadFile]
             ) -> tuple[LoadedModel, list[torch.Tensor]]:
    """Find and load the model, then decode and crop every file for it (one thread hop)."""
    job_id, path = state.models.lookup(model, lambda: _find(state, model))
    loaded = state.models.get(job_id, path)
    images = []
    for i, f in enumerate(files):
        f.file.seek(0)
        images.append(loaded.predictor.load(f.file, name=f.filename or f"file {i + 1}"))
    return loaded, images


@router.post("/predict", response_model=PredictOut)
async def predict_images(
    state: StateDep,
    file: Annotated[list[UploadFile], File(description="one or more images (repeat the field)")],
    model: Annotated[str | None, Form(description="job id; default: the active model")] = None,
) -> dict[str, Any]:
    """Classify photos. Images of concurrent requests share forward passes."""
    limit = state.settings.predict_max_files
    if len(file) > limit:
        raise Unprocessable(f"{len(file)} files in one request; the limit is {limit}")
    loaded, images = await run_in_threadpool(_prepare, state, model, file)
    rows = await loaded.batcher.submit(images)
    names = [f.filename or f"file {i + 1}" for i, f in enumerate(file)]
    predictions = loaded.predictor.report(torch.stack(rows), names)
    state.models.metrics.images.inc(len(predictions))
    state.models.metrics.predicted(loaded.job_id, [p.label for p in predictions])
    return {"model": loaded.job_id, "runtime": loaded.predictor.runtime,
            "calibrated": loaded.predictor.calibrated,
            "temperature": loaded.predictor.temperature,
            "predictions": [p.to_dict() for p in predictions]}
