"""results reported elsewhere (RobustBench model_info files), shown beside ours, not re-evaluated

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 03:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'reference_results',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=256), nullable=False),
        sa.Column('dataset', sa.String(length=64), nullable=False),
        sa.Column('threat_model', sa.String(length=32), nullable=False),
        sa.Column('eps', sa.String(length=32), nullable=True),
        sa.Column('clean_accuracy', sa.Float(), nullable=False),
        sa.Column('robust_accuracy', sa.Float(), nullable=True),
        sa.Column('architecture', sa.String(length=128), nullable=True),
        sa.Column('additional_data', sa.Boolean(), nullable=True),
        sa.Column('source', sa.Text(), nullable=False),
        sa.Column('info', sa.JSON(), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('name', 'dataset', 'threat_model', 'eps', name='uq_reference_entry'),
    )


def downgrade() -> None:
    op.drop_table('reference_results')
