"""What ``/predict`` adds to plain classification: ``top_k``, a model's decision threshold,
``crop=full``, and Grad-CAM explanations (``explain=true``; ``Accept: image/png``).

Explanations need gradients, so they never enter the batched fast path (``app.api.serving``):
the label and probabilities still come from it (an explained answer equals a plain one), and
the heatmaps are computed afterwards in a process of their own at low priority
(``EXPLAIN_WORKERS`` processes, each with ``EXPLAIN_THREADS`` intra-op threads;
:mod:`app.api.explain_process`) from an fp32 copy of the model. They are admitted
against a bound of their own (``EXPLAIN_QUEUE_IMAGES``; 503 with Retry-After beyond it)
before any image is decoded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, BinaryIO, TypeVar
from urllib.parse import quote

from fastapi import Depends, Form, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, Field, ValidationError

from app.api.errors import Unprocessable
from app.api.serving import LoadedModel
from app.engine.explain import Crop
from app.engine.predict import Prediction
from app.models import service as models

if TYPE_CHECKING:
    from app.api.state import State

T = TypeVar("T")


# Each option's words and bounds, for its query parameter and its form field alike.
DOCS = {
    "explain": "add a Grad-CAM heatmap per image",
    "explain_class": "explain this class instead of the predicted one",
    "crop": "center (default: Resize + CenterCrop) or full (the whole photo resized to the "
            "model's square input, no crop)",
    "top_k": "report the k most probable classes (default: all)",
}
CLASS_MAX = 200  # characters of explain_class


class PredictQuery(BaseModel):
    """``/predict``'s query parameters, validated as one model: the options (a form's fields
    win over them) and, for a raw body, where there is no form, the model and the photo's
    name. A raw-body request is validated with this alone (``PredictQuery.of``)."""

    model: str | None = Field(None, max_length=64, description="job id (default: the active "
                              "model); for a raw image body, where there is no form")
    filename: str | None = Field(None, max_length=255, description="a raw body's name in the "
                                 "answer (default: image)")
    explain: bool | None = Field(None, description=DOCS["explain"])
    explain_class: str | None = Field(None, max_length=CLASS_MAX, description=DOCS["explain_class"])
    crop: Crop | None = Field(None, description=DOCS["crop"])
    top_k: int | None = Field(None, ge=1, description=DOCS["top_k"])

    @classmethod
    def of(cls, request: Request) -> PredictQuery:
        """``request``'s query, refused as FastAPI refuses a parameter: 422, ``loc`` naming
        it. The last of a repeated parameter counts, as in FastAPI."""
        try:
            return cls.model_validate(dict(request.query_params))
        except ValidationError as exc:
            raise RequestValidationError(
                [{**e, "loc": ("query", *e["loc"])} for e in exc.errors(include_url=False)]
            ) from exc


@dataclass(frozen=True)
class PredictOptions:
    explain: bool = False
    explain_class: str | None = None
    crop: Crop = "center"
    top_k: int | None = None
    png: bool = False  # Accept: image/png: the overlay itself is the answer
    model: str | None = None  # the query's: a form's own ``model`` field comes after it
    filename: str | None = None  # a raw body's name

    @classmethod
    def of(cls, request: Request, query: PredictQuery, *, explain: bool | None = None,
           explain_class: str | None = None, crop: Crop | None = None,
           top_k: int | None = None) -> PredictOptions:
        """A request's options: its form's fields (the keywords), else its query's."""
        png = _accepts_png(request)
        explain_class = _either(explain_class, query.explain_class)
        return cls(
            explain=bool(_either(explain, query.explain)) or png or explain_class is not None,
            explain_class=explain_class, crop=_either(crop, query.crop) or "center",
            top_k=_either(top_k, query.top_k), png=png, model=query.model,
            filename=query.filename)

    def check(self, classes: Sequence[str], files: int) -> None:
        """422 for options this model or request cannot take."""
        if self.top_k is not None and not 1 <= self.top_k <= len(classes):
            raise Unprocessable(f"top_k must be between 1 and {len(classes)} (the model's "
                                f"classes), not {self.top_k}")
        if self.explain_class is not None and self.explain_class not in classes:
            raise Unprocessable(f"explain_class: unknown class {self.explain_class!r}; the "
                                f"model's classes are {', '.join(classes)}")
        if self.png and files != 1:
            raise Unprocessable(f"Accept: image/png answers one image's overlay; this request "
                                f"has {files} files (ask for JSON to get each one's)")


def _accepts_png(request: Request) -> bool:
    first = request.headers.get("accept", "").split(",")[0].split(";")[0].strip().lower()
    return first == "image/png"


async def predict_options(
    request: Request,
    query: Annotated[PredictQuery, Query()],
    explain: Annotated[bool | None, Form(
        description=DOCS["explain"] + " (or as a query parameter, as every option here)")] = None,
    explain_class: Annotated[str | None, Form(max_length=CLASS_MAX,
                                              description=DOCS["explain_class"])] = None,
    crop: Annotated[Crop | None, Form(description=DOCS["crop"])] = None,
    top_k: Annotated[int | None, Form(ge=1, description=DOCS["top_k"])] = None,
) -> PredictOptions:
    """The options of a multipart ``/predict``, as form fields or query parameters (the form
    wins)."""
    return PredictOptions.of(request, query, explain=explain, explain_class=explain_class,
                             crop=crop, top_k=top_k)


def _either(form: T | None, query: T | None) -> T | None:
    return form if form is not None else query


PredictOptionsDep = Annotated[PredictOptions, Depends(predict_options)]


def _checkpoint(state: State, job_id: str) -> Path:
    def find() -> tuple[str, Path]:
        with state.session() as session:
            return models.find(session, job_id)

    return state.models.lookup(job_id, find)[1]


async def answer(state: State, loaded: LoadedModel, files: list[BinaryIO], names: list[str],
                 predictions: list[Prediction], options: PredictOptions
                 ) -> dict[str, Any] | Response:
    """``/predict``'s answer: labels by the model's decision threshold, the top_k, and each
    image's explanation when asked (or the one overlay PNG for ``Accept: image/png``)."""
    explainer = state.explain
    cached = explainer.cached_decision(loaded.job_id)
    decision = cached[0] if cached is not None else await run_in_threadpool(
        explainer.decision, loaded.job_id, state.session)
    if decision is not None:
        predictions = [Prediction(p.filename, decision.label(p.probabilities), p.probabilities)
                       for p in predictions]
    out = [_shown(p, options.top_k) for p in predictions]
    if options.explain:
        photos = []
        for f, name, p in zip(files, names, predictions, strict=True):
            f.seek(0)
            photos.append((f.read(), name, options.explain_class or p.label))
        checkpoint = await run_in_threadpool(_checkpoint, state, loaded.job_id)
        explained = await explainer.explain(
            loaded.job_id, checkpoint, photos, options.crop,
            wait=state.settings.predict_decode_wait_seconds)
        if options.png:
            e, p = explained[0], predictions[0]
            # Class names and the warning percent-encoded: headers are latin-1.
            headers = {"X-Hotdog-Label": quote(p.label), "X-Hotdog-Class": quote(e.target),
                       "X-Hotdog-Probability": f"{p.probabilities[p.label]:.6f}",
                       "X-Hotdog-Crop-Coverage": "" if e.crop_coverage is None
                       else f"{e.crop_coverage:.4f}",
                       "X-Hotdog-Peak": "" if e.peak is None else f"{e.peak[0]},{e.peak[1]}"}
            if e.warning:
                headers["X-Hotdog-Warning"] = quote(e.warning, safe=" ,;:=()%")
            return Response(e.overlay_png, media_type="image/png", headers=headers)
        for row, e in zip(out, explained, strict=True):
            row["explanation"] = e.to_dict()
    return {"model": loaded.job_id, "runtime": loaded.predictor.runtime,
            "images_per_second": loaded.images_per_second,
            "calibrated": loaded.predictor.calibrated,
            "temperature": loaded.predictor.temperature, "crop": options.crop,
            "decision": decision.to_dict() if decision is not None else None,
            "predictions": out}


def _shown(p: Prediction, top_k: int | None) -> dict[str, Any]:
    row = p.to_dict()
    if top_k is not None:
        best = sorted(p.probabilities.items(), key=lambda kv: kv[1], reverse=True)[:top_k]
        row["probabilities"] = dict(best)
    return row
