"""The ``hotdog`` command's exit codes, and which error or job outcome gives which."""

from __future__ import annotations

from app.client import Job, ServiceError
from app.db.models import ErrorKind
from app.engine import (
    CheckpointError,
    DatasetError,
    ImageDecodeError,
    PretrainedWeightsMissing,
    TrainingCancelled,
)
from app.experiment import DemoFailed

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2  # bad arguments or parameter values
EXIT_INPUT = 3  # unusable dataset, image or checkpoint
EXIT_WEIGHTS = 4  # ImageNet weights not available
EXIT_UNAVAILABLE = 5  # the service (or a download host) cannot be reached, or is busy
EXIT_INTERRUPTED = 130
# A service's answer, by HTTP status: bad parameters or API key, unknown or unusable input,
# try again later. A 422 is about the parameters, except for commands that set
# ``unusable_422`` (an upload's dataset, a photo to classify): then it is about the input.
SERVICE_EXIT = {422: EXIT_USAGE, 401: EXIT_USAGE, 403: EXIT_USAGE, 404: EXIT_INPUT,
                413: EXIT_INPUT, 429: EXIT_UNAVAILABLE, 503: EXIT_UNAVAILABLE}
# Refusals of a job at submission, by the answer's kind: no running worker has the ImageNet
# weights; no running worker would take the job (start one, or submit --queue-anyway).
SERVICE_KIND_EXIT = {"weights_missing": EXIT_WEIGHTS, "no_live_worker": EXIT_UNAVAILABLE}
# Errors of this process, most specific first (the first match wins).
ERROR_EXIT: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], int], ...] = (
    (DemoFailed, EXIT_FAILED),
    (PretrainedWeightsMissing, EXIT_WEIGHTS),
    ((DatasetError, ImageDecodeError, CheckpointError, FileExistsError, FileNotFoundError),
     EXIT_INPUT),
    (ValueError, EXIT_USAGE),
    (TrainingCancelled, EXIT_FAILED),
    (ConnectionError, EXIT_UNAVAILABLE),
    (OSError, EXIT_FAILED),
)

EXIT_CODES_HELP = """exit codes:
  0  success
  1  the operation failed (watch, submit --watch: the job failed or was cancelled)
  2  bad arguments or parameter values, or a missing or wrong API key (or one without
     the scope the request needs)
  3  unusable input (dataset, image file, checkpoint) or an unknown id
  4  ImageNet weights are not available (here, or to the service's worker)
  5  the service cannot be reached or is busy (503, 429), or no worker is running that
     would take the job: try again later
  130  interrupted (Ctrl-C)
"""


def error_exit_code(exc: BaseException, *, unusable_422: bool = False) -> int | None:
    """The exit code for ``exc``, or None when it is no error the command line expects
    (then it propagates, with its traceback)."""
    if isinstance(exc, ServiceError):
        if exc.kind in SERVICE_KIND_EXIT:
            return SERVICE_KIND_EXIT[exc.kind]
        if exc.status == 422 and unusable_422:
            return EXIT_INPUT
        return SERVICE_EXIT.get(exc.status, EXIT_FAILED)
    return next((code for kinds, code in ERROR_EXIT if isinstance(exc, kinds)), None)


def job_exit_code(job: Job) -> int:
    """0 when the job succeeded; 4 when it failed for want of ImageNet weights; else 1."""
    if job["status"] == "succeeded":
        return EXIT_OK
    if job["status"] == "failed" and job.get("error_kind") == ErrorKind.WEIGHTS_MISSING:
        return EXIT_WEIGHTS
    return EXIT_FAILED
