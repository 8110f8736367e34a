"""Deleting jobs and retention: jobs.deleted_at (the row stays for its history, its files are
gone) and jobs.files_removed_at (DELETE ?files_only=true or the KEEP_MODELS sweep freed its
files; the row and the log stay).

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-30

"""
from typing import Sequence

from alembic import op
import sqlalchemy as sa


revision: str = '0013'
down_revision: str | Sequence[str] | None = '0012'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('files_removed_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('files_removed_at')
        batch.drop_column('deleted_at')
