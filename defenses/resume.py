"""Mid-run resume: each finished epoch's training state, written atomically to a run folder.

A state holds the classifier, the optimizer, the learning-rate scheduler, the defense's per-run
state (auxiliary networks, EMA shadows, per-sample memories), every RNG state (global CPU and
CUDA, the shuffle and run generators; batches and augmentation are functions of those and of the
epoch) and the epoch records so far. It is saved with ``torch.save`` and read back with
``torch.load(weights_only=True)``: tensors and plain values only, nothing unpickled as code. The
newest ``keep`` states are kept (default 1), so a run's disk use stays bounded."""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger("advarena")

_UNKNOWN = object()
_NAME = re.compile(r"^epoch-(\d{4,})\.pt$")


def capture(value: Any) -> Any:
    """``value`` as tensors and plain values: a module as its state dict, an object holding
    modules by name (an EMA's ``shadows``) as those, a generator as its state; ``_UNKNOWN`` for a
    type this does not know (configuration, rebuilt by the trainer's constructor and ``setup``)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, nn.Module):
        return {"__module__": {k: v.detach().cpu().clone() for k, v in value.state_dict().items()}}
    if isinstance(value, torch.Generator):
        return {"__generator__": value.get_state()}
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        items = [capture(v) for v in value]
        return _UNKNOWN if any(v is _UNKNOWN for v in items) else items
    if isinstance(value, dict):
        if not all(isinstance(k, (str, int)) for k in value):
            return _UNKNOWN
        items = {k: capture(v) for k, v in value.items()}
        return _UNKNOWN if any(v is _UNKNOWN for v in items.values()) else items
    shadows = getattr(value, "shadows", None)
    if isinstance(shadows, dict) and all(isinstance(m, nn.Module) for m in shadows.values()):
        return {"__shadows__": {name: capture(module) for name, module in shadows.items()}}
    return _UNKNOWN


def restore(current: Any, saved: Any, device: torch.device) -> Any:
    """The value to hold after loading ``saved`` into ``current`` (modules, EMA shadows and
    generators are loaded in place and returned)."""
    if isinstance(saved, dict) and "__module__" in saved:
        current.load_state_dict(saved["__module__"])
        return current
    if isinstance(saved, dict) and "__generator__" in saved:
        current.set_state(saved["__generator__"])
        return current
    if isinstance(saved, dict) and "__shadows__" in saved:
        for name, module in saved["__shadows__"].items():
            restore(current.shadows[name], module, device)
        return current
    if isinstance(saved, torch.Tensor):
        target = current.device if isinstance(current, torch.Tensor) else device
        return saved.to(target)
    if isinstance(saved, dict):
        base = current if isinstance(current, dict) else {}
        return {k: restore(base.get(k), v, device) for k, v in saved.items()}
    if isinstance(saved, list):
        base = current if isinstance(current, (list, tuple)) and len(current) == len(saved) else [None] * len(saved)
        out = [restore(c, v, device) for c, v in zip(base, saved)]
        return tuple(out) if isinstance(current, tuple) else out
    return saved


class EpochStates:
    """The folder of one training run's finished-epoch states, ``epoch-NNNN.pt``."""

    def __init__(self, folder: Path, keep: int = 1) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1 epoch state, got {keep}")
        self.folder, self.keep = Path(folder), keep

    def _files(self) -> list[tuple[int, Path]]:
        if not self.folder.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.folder.iterdir() if (m := _NAME.match(p.name))]
        return sorted(found)

    def epochs(self) -> list[int]:
        """The epochs whose states are on disk, oldest first."""
        return [epoch for epoch, _ in self._files()]

    def latest(self) -> dict[str, Any] | None:
        """The newest state that loads, or None; an unreadable one is skipped with a warning."""
        for epoch, path in reversed(self._files()):
            try:
                return torch.load(path, map_location="cpu", weights_only=True)
            except Exception as err:  # a torn or foreign file: fall back to the previous epoch
                log.warning("epoch state %s unreadable (%s); trying an earlier one", path, err)
        return None

    def save(self, epoch: int, state: dict[str, Any]) -> Path:
        """Write epoch ``epoch``'s state atomically (temp file, fsync, rename) and drop all but
        the newest ``keep``."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"epoch-{epoch:04d}.pt"
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                torch.save(state, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        for _, old in self._files()[:-self.keep]:
            old.unlink(missing_ok=True)
        return path

    def clear(self) -> None:
        """Remove every state (the run finished and its final checkpoint is stored)."""
        for _, path in self._files():
            path.unlink(missing_ok=True)
        if self.folder.is_dir() and not any(self.folder.iterdir()):
            self.folder.rmdir()

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for _, p in self._files())
