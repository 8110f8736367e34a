"""Why a job ended: jobs.error_kind (weights_missing, out_of_memory, crashed, ...).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30

"""
from typing import Sequence

from alembic import op
import sqlalchemy as sa


revision: str = '0004'
down_revision: str | Sequence[str] | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('error_kind', sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('error_kind')
