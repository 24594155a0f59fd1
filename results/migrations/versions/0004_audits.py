"""audit rows (reproducibility verdicts, gradient-masking flags); the protocol stored with each evaluation

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 01:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'audits',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('checkpoint_id', sa.Integer(), nullable=True),
        sa.Column('evaluation_id', sa.Integer(), nullable=True),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('verdict', sa.String(length=16), nullable=False),
        sa.Column('items', sa.JSON(), nullable=False),
        sa.Column('flags', sa.JSON(), nullable=False),
        sa.Column('environment_diff', sa.JSON(), nullable=False),
        sa.Column('environment', sa.JSON(), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['checkpoint_id'], ['checkpoints.id']),
        sa.ForeignKeyConstraint(['evaluation_id'], ['evaluations.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_audits_checkpoint_id', 'audits', ['checkpoint_id'])
    with op.batch_alter_table('evaluations') as batch:
        batch.add_column(sa.Column('protocol_spec', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('evaluations') as batch:
        batch.drop_column('protocol_spec')
    op.drop_index('ix_audits_checkpoint_id', table_name='audits')
    op.drop_table('audits')
