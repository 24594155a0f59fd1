"""indicators of attack failure stored with each attack row

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 13:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('attack_results') as batch:
        batch.add_column(sa.Column('indicators', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('attack_results') as batch:
        batch.drop_column('indicators')
