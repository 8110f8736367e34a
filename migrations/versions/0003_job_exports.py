"""Exports written when a job succeeded (the ONNX file, its verification or why it was discarded).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28

"""
from typing import Sequence

from alembic import op
import sqlalchemy as sa


revision: str = '0003'
down_revision: str | Sequence[str] | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('exports', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('exports')
