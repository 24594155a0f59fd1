"""job claims by content key, so that concurrent workers never run the same job

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 07:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'job_claims',
        sa.Column('key', sa.String(length=64), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('label', sa.String(length=256), nullable=False),
        sa.Column('owner', sa.String(length=256), nullable=False),
        sa.Column('claimed_at', sa.DateTime(), nullable=False),
        sa.Column('heartbeat_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('key'),
    )


def downgrade() -> None:
    op.drop_table('job_claims')
