"""Workers as rows: each worker's kind, GPUs, queues, version, ImageNet weights, last seen.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30

"""
from typing import Sequence

from alembic import op
import sqlalchemy as sa


revision: str = '0005'
down_revision: str | Sequence[str] | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'workers',
        sa.Column('name', sa.String(length=200), nullable=False),
        sa.Column('kind', sa.String(length=8), nullable=False),
        sa.Column('gpus', sa.Integer(), nullable=False),
        sa.Column('queues', sa.JSON(), nullable=False),
        sa.Column('version', sa.String(length=40), nullable=False),
        sa.Column('has_imagenet', sa.Boolean(), nullable=False),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('last_seen', sa.DateTime(timezone=True), nullable=False),
        sa.Column('stopped_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('name'),
    )
    op.create_index('ix_workers_last_seen', 'workers', ['last_seen'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_workers_last_seen', table_name='workers')
    op.drop_table('workers')
