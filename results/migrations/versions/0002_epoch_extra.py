"""per-epoch defense statistics (robust estimates, early-stop decisions)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 22:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('epochs') as batch:
        batch.add_column(sa.Column('extra', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('epochs') as batch:
        batch.drop_column('extra')
