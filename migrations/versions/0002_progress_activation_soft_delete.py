"""Progress within an epoch, the active model, soft-deleted datasets.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28

"""
from typing import Sequence

from alembic import op
import sqlalchemy as sa


revision: str = '0002'
down_revision: str | Sequence[str] | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('epoch_fraction', sa.Float(), server_default='0', nullable=False))
        batch.add_column(sa.Column('activated_at', sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table('datasets') as batch:
        batch.add_column(sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('datasets') as batch:
        batch.drop_column('deleted_at')
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('activated_at')
        batch.drop_column('epoch_fraction')
