"""Dataset reports and relabelled versions.

datasets.report_status (pending | running | ready | failed), report_error,
report_heartbeat_at, report_attempts: the report computed in the background after an upload
(rows that exist already start pending: the API computes their reports when it starts);
datasets.parent_id and changes: a version made by relabelling another.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02

"""
from typing import Sequence

from alembic import op
import sqlalchemy as sa


revision: str = '0009'
down_revision: str | Sequence[str] | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('datasets') as batch:
        batch.add_column(sa.Column(
            'report_status', sa.Enum('pending', 'running', 'ready', 'failed',
                                     name='reportstatus', native_enum=False, length=16),
            server_default='pending', nullable=False))
        batch.add_column(sa.Column('report_error', sa.Text(), nullable=True))
        batch.add_column(sa.Column('report_heartbeat_at', sa.DateTime(timezone=True),
                                   nullable=True))
        batch.add_column(sa.Column('report_attempts', sa.Integer(), server_default='0',
                                   nullable=False))
        batch.add_column(sa.Column('parent_id', sa.String(length=36), nullable=True))
        batch.add_column(sa.Column('changes', sa.JSON(), nullable=True))
        batch.create_index('ix_datasets_parent_id', ['parent_id'], unique=False)
        batch.create_foreign_key('fk_datasets_parent_id_datasets', 'datasets', ['parent_id'],
                                 ['id'], ondelete='SET NULL')


def downgrade() -> None:
    with op.batch_alter_table('datasets') as batch:
        batch.drop_constraint('fk_datasets_parent_id_datasets', type_='foreignkey')
        batch.drop_index('ix_datasets_parent_id')
        batch.drop_column('changes')
        batch.drop_column('parent_id')
        batch.drop_column('report_attempts')
        batch.drop_column('report_heartbeat_at')
        batch.drop_column('report_error')
        batch.drop_column('report_status')
