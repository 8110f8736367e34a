"""Job kinds (train, evaluate a model on a dataset) and the history of the active model.

jobs.kind and jobs.model_id (an evaluate job's model); the activations table, filled with the
activations the jobs' activated_at already records (oldest first, each replacing the one
before it), so that a rollback works on an upgraded database too.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01

"""
from typing import Sequence

from alembic import op
import sqlalchemy as sa


revision: str = '0008'
down_revision: str | Sequence[str] | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column(
            'kind', sa.Enum('train', 'evaluate', name='jobkind', native_enum=False, length=16),
            server_default='train', nullable=False))
        batch.add_column(sa.Column('model_id', sa.String(length=36), nullable=True))
        batch.create_index('ix_jobs_model_id', ['model_id'], unique=False)
        batch.create_foreign_key('fk_jobs_model_id_jobs', 'jobs', ['model_id'], ['id'],
                                 ondelete='CASCADE')
    activations = op.create_table(
        'activations',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('action', sa.Enum('activate', 'rollback', name='activationaction',
                                    native_enum=False, length=16), nullable=False),
        sa.Column('model_id', sa.String(length=36), nullable=False),
        sa.Column('previous_id', sa.String(length=36), nullable=True),
        sa.Column('undoes_id', sa.Integer(), nullable=True),
        sa.Column('metric', sa.String(length=16), nullable=True),
        sa.Column('dataset_id', sa.String(length=36), nullable=True),
        sa.Column('model_score', sa.Float(), nullable=True),
        sa.Column('previous_score', sa.Float(), nullable=True),
        sa.Column('forced', sa.Boolean(), nullable=False),
        sa.Column('actor', sa.String(length=200), nullable=False),
        sa.Column('client', sa.String(length=200), nullable=True),
        sa.Column('note', sa.Text(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(),
                  nullable=False),
        sa.ForeignKeyConstraint(['model_id'], ['jobs.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['previous_id'], ['jobs.id'], ondelete='SET NULL'),
        sa.ForeignKeyConstraint(['undoes_id'], ['activations.id'], ondelete='SET NULL'),
        sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_activations_model_id', 'activations', ['model_id'], unique=False)
    _record_past_activations(activations)


def _record_past_activations(activations: sa.Table) -> None:
    jobs = sa.table('jobs', sa.column('id', sa.String()),
                    sa.column('activated_at', sa.DateTime(timezone=True)))
    rows = op.get_bind().execute(
        sa.select(jobs.c.id, jobs.c.activated_at).where(jobs.c.activated_at.is_not(None))
        .order_by(jobs.c.activated_at)).all()
    previous = None
    history = []
    for job_id, at in rows:
        history.append({'action': 'activate', 'model_id': job_id, 'previous_id': previous,
                        'forced': False, 'actor': 'unknown', 'created_at': at,
                        'note': 'activated before activations were recorded'})
        previous = job_id
    if history:
        op.bulk_insert(activations, history)


def downgrade() -> None:
    op.drop_index('ix_activations_model_id', table_name='activations')
    op.drop_table('activations')
    with op.batch_alter_table('jobs') as batch:
        batch.drop_constraint('fk_jobs_model_id_jobs', type_='foreignkey')
        batch.drop_index('ix_jobs_model_id')
        batch.drop_column('model_id')
        batch.drop_column('kind')
