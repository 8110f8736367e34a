"""A two-class model's decision threshold, set at activation (issue 18).

jobs.decision_threshold and jobs.decision_class: /predict answers decision_class when its
probability reaches the threshold, the other class otherwise; NULL keeps the most probable.

Revision ID: 0011
Revises: 0013
Create Date: 2026-11-30

"""
from typing import Sequence

from alembic import op
import sqlalchemy as sa


revision: str = '0011'
down_revision: str | Sequence[str] | None = '0013'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('decision_threshold', sa.Float(), nullable=True))
        batch.add_column(sa.Column('decision_class', sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('decision_class')
        batch.drop_column('decision_threshold')
