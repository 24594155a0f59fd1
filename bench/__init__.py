"""advarena's spine: CLI, suite and protocol schema, datasets, model zoo, checkpoints, jobs, executors."""

__version__ = "0.1.0"
