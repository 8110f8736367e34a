"""A trained checkpoint recorded as a succeeded job in a fresh embedded DATA_DIR, so that a
``hotdog serve`` started on that folder serves it (the benches' model, without a worker)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any


def record_model(data_dir: Path, ckpt: Path, result: Any, params: dict[str, Any],
                 exports: dict[str, Any] | None = None) -> str:
    """The job id under which ``ckpt`` (``result``: what ``fit`` returned) is served."""
    from sqlalchemy.orm import Session

    from app.core.config import Settings
    from app.db.models import Dataset, JobStatus
    from app.db.session import make_engine, upgrade
    from app.jobs.service import claim_job, create_job, finish_job

    # The embedded default, as the server the benches start uses, whatever DATABASE_URL says.
    settings = Settings(data_dir=data_dir, database_url=None, broker_url=None)
    upgrade(settings.db_url)
    engine = make_engine(settings.db_url)
    try:
        with Session(engine) as s:
            ds = Dataset(id=uuid.uuid4().hex, name="bench", classes=result.classes,
                         counts={}, warnings=[], size_bytes=0)
            s.add(ds)
            s.flush()
            job = create_job(s, dataset_id=ds.id, params=params, epochs=1)
            s.commit()
            claim_job(s, job.id, worker="bench", lease_seconds=60)
            assert result.evaluation is not None
            finish_job(s, job.id, worker="bench", status=JobStatus.SUCCEEDED,
                       checkpoint_path=str(ckpt), evaluation=result.evaluation.to_dict(),
                       exports=exports)
            s.commit()
            return str(job.id)
    finally:
        engine.dispose()
