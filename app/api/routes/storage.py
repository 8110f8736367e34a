"""``/storage``: what DATA_DIR holds, its free space, and the biggest datasets and jobs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import GUARDED, SessionDep, StateDep
from app.api.schemas import ERRORS, StorageOut
from app.storage import usage

router = APIRouter(prefix="/storage", tags=["storage"], dependencies=GUARDED, responses=ERRORS)


@router.get("", response_model=StorageOut)
def storage(
    session: SessionDep, state: StateDep,
    limit: Annotated[int, Query(ge=1, le=100, description="the biggest items listed")] = 20,
) -> StorageOut:
    """Bytes used under DATA_DIR by category (datasets, checkpoints, exports, logs,
    temporary files, database), the file system's free space, and the biggest datasets
    and jobs, each with why it cannot be deleted now (``protected``), if it cannot.
    Measured on the disk: what deleting an item frees."""
    return StorageOut.model_validate(usage.report(session, state.settings, limit=limit))
