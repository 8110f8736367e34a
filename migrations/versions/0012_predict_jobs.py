"""Batch prediction jobs: jobs.kind 'predict', and jobs.dataset_id nullable (a predict job of
uploaded photos has no dataset: its photos are in the job's own folder).

Revision ID: 0012
Revises: 0009
Create Date: 2026-11-30

"""
from typing import Sequence

from alembic import op
import sqlalchemy as sa


revision: str = '0012'
down_revision: str | Sequence[str] | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_KINDS = sa.Enum('train', 'evaluate', name='jobkind', native_enum=False, length=16)
NEW_KINDS = sa.Enum('train', 'evaluate', 'predict', name='jobkind', native_enum=False,
                    length=16)


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.alter_column('kind', existing_type=OLD_KINDS, type_=NEW_KINDS,
                           existing_nullable=False, existing_server_default='train')
        batch.alter_column('dataset_id', existing_type=sa.String(length=36), nullable=True)


def downgrade() -> None:
    # Predict jobs cannot be described by the older schema: their rows go (their folders,
    # results included, stay in DATA_DIR/jobs).
    op.execute("DELETE FROM jobs WHERE kind = 'predict'")
    with op.batch_alter_table('jobs') as batch:
        batch.alter_column('dataset_id', existing_type=sa.String(length=36), nullable=False)
        batch.alter_column('kind', existing_type=NEW_KINDS, type_=OLD_KINDS,
                           existing_nullable=False, existing_server_default='train')
