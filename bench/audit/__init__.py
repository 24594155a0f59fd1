"""Audits: re-derive stored results from their checkpoints, and check them for gradient masking."""

from bench.audit.masking import CHECKS, Flag, Reattack, masking_flags
from bench.audit.reproduce import CANNOT_CHECK, DIFFERS, REPRODUCED, AuditItem, AuditReport, audit_checkpoint
from bench.audit.retrain import retrain_checkpoint

__all__ = ["CANNOT_CHECK", "CHECKS", "DIFFERS", "REPRODUCED", "AuditItem", "AuditReport", "Flag", "Reattack",
           "audit_checkpoint", "masking_flags", "retrain_checkpoint"]
