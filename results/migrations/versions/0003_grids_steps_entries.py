"""eps grids, per-example first-success iteration and input norm, suite entries and sweeps

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 01:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('training_runs') as batch:
        batch.add_column(sa.Column('entry', sa.String(length=128), nullable=True))
        batch.add_column(sa.Column('sweep', sa.JSON(), nullable=True))
    with op.batch_alter_table('attack_results') as batch:
        batch.add_column(sa.Column('grid_of', sa.String(length=64), nullable=True))
    with op.batch_alter_table('example_results') as batch:
        batch.add_column(sa.Column('success_step', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('x_l2', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('example_results') as batch:
        batch.drop_column('x_l2')
        batch.drop_column('success_step')
    with op.batch_alter_table('attack_results') as batch:
        batch.drop_column('grid_of')
    with op.batch_alter_table('training_runs') as batch:
        batch.drop_column('sweep')
        batch.drop_column('entry')
