"""Review jobs: jobs.kind may be 'review' (a label review of a training job's dataset).

jobs.kind is a non-native enum, a VARCHAR(16) without a CHECK constraint, so 'review' fits
the column as it is: upgrading changes nothing in the schema. Downgrading deletes the review
jobs (their results are files in their job folders), because the code of 0008 cannot read
a kind it does not know.

Revision ID: 0010
Revises: 0011
Create Date: 2026-11-30

"""
from typing import Sequence

from alembic import op
import sqlalchemy as sa


revision: str = '0010'
down_revision: str | Sequence[str] | None = '0011'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    op.execute(sa.text("DELETE FROM jobs WHERE kind = 'review'"))
