"""Model zoo: the seeds' networks and GPU-scale ResNets; every model maps [0, 1] images to logits."""

from bench.models.base import MODELS, Normalize, build_model, register_model
from bench.models import learned_attackers, resnets, small  # noqa: F401  (registers the built-ins)

__all__ = ["MODELS", "Normalize", "build_model", "register_model"]
