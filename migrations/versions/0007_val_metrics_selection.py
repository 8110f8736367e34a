"""Model selection on a validation split: per-epoch validation metrics
(epoch_metrics.val_loss, val_acc, val_macro_f1; NULL for a job without a validation split),
the epoch whose model a job kept (jobs.selected_epoch), a note on how it ended
(jobs.note, e.g. early stopping), and its calibration (evaluations.calibration: the
temperature and the test ECE before and after).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01

"""
from typing import Sequence

from alembic import op
import sqlalchemy as sa


revision: str = '0007'
down_revision: str | Sequence[str] | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('epoch_metrics') as batch:
        batch.add_column(sa.Column('val_loss', sa.Float(), nullable=True))
        batch.add_column(sa.Column('val_acc', sa.Float(), nullable=True))
        batch.add_column(sa.Column('val_macro_f1', sa.Float(), nullable=True))
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('selected_epoch', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('note', sa.Text(), nullable=True))
    with op.batch_alter_table('evaluations') as batch:
        batch.add_column(sa.Column('calibration', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('evaluations') as batch:
        batch.drop_column('calibration')
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('note')
        batch.drop_column('selected_epoch')
    with op.batch_alter_table('epoch_metrics') as batch:
        batch.drop_column('val_macro_f1')
        batch.drop_column('val_acc')
        batch.drop_column('val_loss')
