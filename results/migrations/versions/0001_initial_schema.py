"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-22 15:46:50.107060
"""
from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('datasets',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.Column('n_train', sa.Integer(), nullable=False),
    sa.Column('n_test', sa.Integer(), nullable=False),
    sa.Column('description', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('fingerprint')
    )
    op.create_table('training_runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('label', sa.String(length=128), nullable=False),
    sa.Column('role', sa.String(length=32), nullable=False),
    sa.Column('defense', sa.String(length=64), nullable=False),
    sa.Column('hparams', sa.JSON(), nullable=False),
    sa.Column('arch', sa.String(length=64), nullable=False),
    sa.Column('arch_params', sa.JSON(), nullable=False),
    sa.Column('dataset_id', sa.Integer(), nullable=False),
    sa.Column('seed', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('started_at', sa.DateTime(), nullable=False),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.Column('total_seconds', sa.Double(), nullable=True),
    sa.Column('environment', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('key')
    )
    op.create_table('checkpoints',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.Column('epoch', sa.Integer(), nullable=False),
    sa.Column('final', sa.Boolean(), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('arch', sa.String(length=64), nullable=False),
    sa.Column('defense', sa.String(length=64), nullable=False),
    sa.Column('meta', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['training_runs.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('sha256')
    )
    with op.batch_alter_table('checkpoints', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_checkpoints_run_id'), ['run_id'], unique=False)

    op.create_table('epochs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('epoch', sa.Integer(), nullable=False),
    sa.Column('loss', sa.Double(), nullable=False),
    sa.Column('train_accuracy', sa.Double(), nullable=False),
    sa.Column('train_adv_accuracy', sa.Double(), nullable=True),
    sa.Column('test_accuracy', sa.Double(), nullable=True),
    sa.Column('seconds', sa.Double(), nullable=False),
    sa.Column('forward_passes', sa.Integer(), nullable=False),
    sa.Column('backward_passes', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['training_runs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('run_id', 'epoch')
    )
    with op.batch_alter_table('epochs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_epochs_run_id'), ['run_id'], unique=False)

    op.create_table('evaluations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('checkpoint_id', sa.Integer(), nullable=False),
    sa.Column('protocol', sa.String(length=64), nullable=False),
    sa.Column('protocol_version', sa.Integer(), nullable=False),
    sa.Column('protocol_hash', sa.String(length=64), nullable=False),
    sa.Column('subset_hash', sa.String(length=64), nullable=False),
    sa.Column('n_examples', sa.Integer(), nullable=False),
    sa.Column('benign_accuracy', sa.Double(), nullable=False),
    sa.Column('seconds', sa.Double(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('environment', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['checkpoint_id'], ['checkpoints.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('key')
    )
    with op.batch_alter_table('evaluations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_evaluations_checkpoint_id'), ['checkpoint_id'], unique=False)

    op.create_table('attack_results',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('evaluation_id', sa.Integer(), nullable=False),
    sa.Column('attack_id', sa.String(length=64), nullable=False),
    sa.Column('attack', sa.String(length=64), nullable=False),
    sa.Column('attack_key', sa.String(length=64), nullable=False),
    sa.Column('config', sa.JSON(), nullable=False),
    sa.Column('threat', sa.String(length=16), nullable=False),
    sa.Column('norm', sa.String(length=8), nullable=True),
    sa.Column('eps', sa.Double(), nullable=True),
    sa.Column('source_checkpoint_id', sa.Integer(), nullable=True),
    sa.Column('n_examples', sa.Integer(), nullable=False),
    sa.Column('robust_accuracy', sa.Double(), nullable=False),
    sa.Column('success_rate', sa.Double(), nullable=False),
    sa.Column('mean_l2', sa.Double(), nullable=True),
    sa.Column('median_l2', sa.Double(), nullable=True),
    sa.Column('forward_passes', sa.Integer(), nullable=False),
    sa.Column('backward_passes', sa.Integer(), nullable=False),
    sa.Column('seconds', sa.Double(), nullable=False),
    sa.ForeignKeyConstraint(['evaluation_id'], ['evaluations.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['source_checkpoint_id'], ['checkpoints.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('evaluation_id', 'attack_id')
    )
    with op.batch_alter_table('attack_results', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_attack_results_evaluation_id'), ['evaluation_id'], unique=False)

    op.create_table('example_results',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('attack_result_id', sa.Integer(), nullable=False),
    sa.Column('example_index', sa.Integer(), nullable=False),
    sa.Column('label', sa.Integer(), nullable=False),
    sa.Column('clean_correct', sa.Boolean(), nullable=False),
    sa.Column('adv_correct', sa.Boolean(), nullable=False),
    sa.Column('success', sa.Boolean(), nullable=False),
    sa.Column('l2', sa.Float(), nullable=False),
    sa.Column('linf', sa.Float(), nullable=False),
    sa.Column('pred', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['attack_result_id'], ['attack_results.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('attack_result_id', 'example_index')
    )
    with op.batch_alter_table('example_results', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_example_results_attack_result_id'), ['attack_result_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('example_results', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_example_results_attack_result_id'))

    op.drop_table('example_results')
    with op.batch_alter_table('attack_results', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_attack_results_evaluation_id'))

    op.drop_table('attack_results')
    with op.batch_alter_table('evaluations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_evaluations_checkpoint_id'))

    op.drop_table('evaluations')
    with op.batch_alter_table('epochs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_epochs_run_id'))

    op.drop_table('epochs')
    with op.batch_alter_table('checkpoints', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_checkpoints_run_id'))

    op.drop_table('checkpoints')
    op.drop_table('training_runs')
    op.drop_table('datasets')
