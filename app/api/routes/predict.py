"""``/predict``: classify photos with the active model or a named one.

The handler is ``async``. A request is admitted against the queue of images waiting to be
decoded or computed before any of its images is decoded (503 with Retry-After past
``PREDICT_QUEUE_IMAGES``); its images are then decoded on the decode threads, each within
the process's decode budget, and the images of concurrent requests share forward passes
(``app.api.serving``). It takes no SessionDep: the model is looked up (in a session of its
own) only when the lookup cache has no answer.

Two bodies: a multipart form (``file`` repeated, ``model``), for browsers and several
photos; or one photo as the raw body (``Content-Type: image/jpeg|png|webp``, ``model`` in
the query), which skips the multipart parser and its spooled temporary files, and FastAPI's
parameter handling too (``PredictRoute``).
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Callable, Coroutine
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import torch
from fastapi import APIRouter, File, Form, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.routing import APIRoute
from pydantic import TypeAdapter

from app.api import explain
from app.api.deps import GUARDED, StateDep
from app.api.errors import Unprocessable, UnsupportedMediaType
from app.api.explain import PredictOptions, PredictOptionsDep, PredictQuery
from app.api.schemas import ERRORS, PredictOut
from app.api.serving import LoadedModel, Overloaded
from app.api.state import State
from app.engine.explain import Crop, load_full_image
from app.engine.images import DecodeBusy
from app.models import service as models


class PredictRoute(APIRoute):
    """``/predict``'s route. A request is admitted (``State.intake``) before its body is
    parsed: refused, its body is read and dropped unparsed, then answered 503 with
    Retry-After. A raw-body request is then answered by ``_predict_raw``, without FastAPI's
    per-parameter work for the form's fields (most of the event loop's time per request, in a
    profile under load); a form goes through FastAPI (``predict_images``)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def admitted(request: Request) -> Response:
            state: State = request.app.state.hotdog
            declared = request.headers.get("content-length", "")
            size = int(declared) if declared.isdigit() else state.settings.predict_max_bytes
            refusal = state.intake.refusal(size)
            if refusal is not None:
                async for _chunk in request.stream():  # the client then reads the answer
                    pass
                raise Overloaded(refusal)
            with state.intake.receive(size):
                if _content_type(request) in RAW_ACCEPTED:
                    return await _predict_raw(request, state)
                return await handle(request)

        return admitted


router = APIRouter(tags=["predict"], dependencies=GUARDED, responses=ERRORS,
                   route_class=PredictRoute)


def _find(state: State, model: str | None) -> tuple[str, Path]:
    with state.session() as session:
        return models.find(session, model)


def _model(state: State, model: str | None) -> LoadedModel:
    job_id, path = state.models.lookup(model, lambda: _find(state, model))
    return state.models.get(job_id, path)


class _Progress:
    """A request's decoding: it is shed only when none of its images has started or finished
    for ``wait`` seconds (a backlog), never for the length of its own work: a lone request
    of many large images is decoded one after another and answered."""

    def __init__(self, wait: float) -> None:
        self.wait = wait
        self.last = time.monotonic()
        self.active = 0  # images picked up by a decode thread and not finished
        self.lock = threading.Lock()

    def moved(self, active: int) -> None:
        """An image was picked up (+1) or finished (-1): the request progresses."""
        with self.lock:
            self.active += active
            self.last = time.monotonic()

    def left(self) -> float:
        return self.last + self.wait - time.monotonic()

    def stalled(self) -> bool:
        return not self.active and self.left() <= 0


def _load(state: State, loaded: LoadedModel, file: BinaryIO, name: str, progress: _Progress,
          crop: Crop = "center") -> torch.Tensor:
    wait = progress.left()
    if wait <= 0:
        raise DecodeBusy("images are decoded slower than they arrive; retry shortly")
    progress.moved(+1)
    try:
        file.seek(0)
        if crop == "full":
            return load_full_image(file, loaded.predictor.preprocessing, name=name,
                                   budget=state.decode_budget, wait=wait)
        return loaded.predictor.load(file, name=name, budget=state.decode_budget, wait=wait)
    finally:
        progress.moved(-1)


async def _decode(state: State, loaded: LoadedModel, files: list[BinaryIO],
                  names: list[str], crop: Crop = "center") -> list[torch.Tensor]:
    """Every file decoded and cropped on the decode threads, in parallel. Each image must
    get its share of the decode budget within the wait, and the request is shed as soon as
    none of its images has started or finished for that long (waiting behind other
    requests' work): a backlog of slow decodes is refused, not left to pile up. The first
    failure fails the request, and its images not started yet are dropped."""
    loop = asyncio.get_running_loop()
    progress = _Progress(state.settings.predict_decode_wait_seconds)
    decodes = [loop.run_in_executor(state.decode_pool,
                                    partial(_load, state, loaded, f, n, progress, crop))
               for f, n in zip(files, names, strict=True)]
    try:
        pending: set[asyncio.Future[torch.Tensor]] = set(decodes)
        while pending:
            done, pending = await asyncio.wait(pending, timeout=max(progress.left(), 0.05),
                                               return_when=asyncio.FIRST_COMPLETED)
            for d in done:
                d.result()  # the first failure fails the request
            if not done and progress.stalled():
                raise DecodeBusy("image decoding is at capacity (the request's images could "
                                 "not start); retry shortly")
        return [d.result() for d in decodes]
    except BaseException:
        for d in decodes:
            d.cancel()
        raise


def _decode_here(state: State, loaded: LoadedModel, files: list[BinaryIO], names: list[str],
                 crop: Crop) -> list[torch.Tensor]:
    """``_decode`` on the calling thread (a forward thread, for a lone request: see
    ``Batcher.run_alone``)."""
    progress = _Progress(state.settings.predict_decode_wait_seconds)
    return [_load(state, loaded, f, n, progress, crop)
            for f, n in zip(files, names, strict=True)]


# One photo as the body: each format the decoder reads (images.SUPPORTED_FORMATS), under its
# registered type and the aliases clients send, or application/octet-stream (what a generic
# binary upload is labelled). The decoder reads the format from the bytes, whatever the header
# says, and refuses others with a 422 naming the formats.
RAW_TYPES = ("image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp", "image/tiff",
             "application/octet-stream")
RAW_ACCEPTED = frozenset(RAW_TYPES) | {"image/jpg", "image/pjpeg", "image/x-png",
                                        "image/x-ms-bmp", "image/x-bmp", "image/x-tiff"}
# The request body, both ways (FastAPI documents the form alone; its schema keeps its name).
BODIES = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {
        "$ref": "#/components/schemas/Body_predict_images_predict_post"}},
    **{t: {"schema": {"type": "string", "format": "binary"}} for t in RAW_TYPES}}}}


def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


PREDICT_OUT = TypeAdapter(PredictOut)


async def _predict_raw(request: Request, state: State) -> Response:
    """One photo as the body. The query is validated as one model and the answer checked
    and serialised by pydantic in one call each: what FastAPI does for the form, per field."""
    body = await request.body()  # read whole first: the client then reads any refusal
    options = PredictOptions.of(request, PredictQuery.of(request))
    if not body:
        raise Unprocessable("the request body is empty: send the photo's bytes")
    answer = await _classify(state, options, [io.BytesIO(body)], [options.filename or "image"])
    if isinstance(answer, Response):
        return answer
    return Response(PREDICT_OUT.dump_json(PREDICT_OUT.validate_python(answer)),
                    media_type="application/json")


@router.post("/predict", response_model=PredictOut, openapi_extra=BODIES,
             responses={200: {"content": {"image/png": {}},
                              "description": "JSON; or, for one image with `Accept: image/png`, "
                              "its explanation's overlay"}})
async def predict_images(
    request: Request,
    state: StateDep,
    options: PredictOptionsDep,
    file: Annotated[list[UploadFile] | None, File(
        description="one or more images (repeat the field)")] = None,
    model: Annotated[str | None, Form(description="job id; default: the active model")] = None,
) -> dict[str, Any] | Response:
    """Classify photos: a multipart form (``file``, repeated) or one photo as the raw body
    (``Content-Type: image/jpeg``, ``image/png``, ``image/webp``, ``image/gif``, ``image/bmp``,
    ``image/tiff`` or ``application/octet-stream``; ``?model=`` and the options in the
    query). Images of concurrent requests share forward passes; explanations (Grad-CAM) run
    outside them."""
    # A raw body never gets here: PredictRoute answers it (_predict_raw).
    ctype = _content_type(request)
    if ctype != "multipart/form-data":
        raise UnsupportedMediaType(
            f"Content-Type {ctype or '(none)'} is not accepted: send a multipart/form-data "
            f"form with `file` fields, or one photo as the body with Content-Type "
            f"{', '.join(RAW_TYPES)}")
    if not file:
        raise Unprocessable("no `file` field in the form: send one or more images as `file`")
    names = [f.filename or f"file {i + 1}" for i, f in enumerate(file)]
    return await _classify(state, options, [f.file for f in file], names, form_model=model)


async def _classify(state: State, options: PredictOptions, sources: list[BinaryIO],
                    names: list[str], *, form_model: str | None = None
                    ) -> dict[str, Any] | Response:
    """What both bodies share once their photos are at hand: the model, the batched forward
    passes, and the answer (``explain.answer``)."""
    limit = state.settings.predict_max_files
    if len(sources) > limit:
        raise Unprocessable(f"{len(sources)} files in one request; the limit is {limit}")
    name = options.model or form_model
    cached = state.models.cached(name)
    loaded = cached if cached is not None else await run_in_threadpool(_model, state, name)
    options.check(loaded.predictor.classes, len(sources))
    explaining = state.explain.admit(len(sources)) if options.explain else nullcontext()
    with state.models.held(loaded), explaining:  # metric series stay until it is done
        with loaded.batcher.admit(len(sources)), state.intake.decode(len(sources)):
            if len(sources) == 1 and loaded.batcher.alone(1):
                rows = await loaded.batcher.run_alone(partial(
                    _decode_here, state, loaded, sources, names, options.crop))
            else:
                rows = None
                images = await _decode(state, loaded, sources, names, options.crop)
        if rows is None:
            rows = await loaded.batcher.submit(images)
        predictions = loaded.predictor.report(torch.stack(rows), names)
        state.models.metrics.images.inc(len(predictions))
        state.models.predicted(loaded, [p.label for p in predictions])
        return await explain.answer(state, loaded, sources, names, predictions, options)
