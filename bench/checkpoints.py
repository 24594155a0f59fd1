"""Checkpoints: ``weights.safetensors`` + ``meta.json``; sha256 verified on load; never unpickled.

The weights file also records, in its safetensors header, the model description (the zoo
architecture and data shape, or an external model's factory, arguments and code), so its sha256,
which every evaluation, transfer source and learned attacker is keyed by, identifies the model and
not the tensors alone: the same tensors behind two factories are two checkpoints."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from bench.errors import AdvarenaError, CheckpointError
from bench.models import build_model
from results.store import model_description

WEIGHTS_FILE = "weights.safetensors"
META_FILE = "meta.json"
META_FORMAT = 1
#: The safetensors header field holding the model description (canonical JSON).
MODEL_FIELD = "advarena.model"
REQUIRED_META = ("format", "arch", "arch_params", "input_shape", "num_classes", "mean", "std",
                 "dataset", "defense", "hparams", "seed", "epoch", "sha256")


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint on disk: its folder and parsed meta.json."""

    path: Path
    meta: dict[str, Any]

    @property
    def sha256(self) -> str:
        return str(self.meta["sha256"])

    def build(self) -> nn.Module:
        """An untrained model of the recorded architecture (an external model: from its factory)."""
        if self.meta["arch"] == "external":
            from bench.external import build_external

            return build_external(self.meta["factory"], self.meta.get("factory_kwargs", {}),
                                  self.meta.get("factory_code"))
        return build_model(self.meta["arch"], self.meta["input_shape"], self.meta["num_classes"],
                           self.meta["mean"], self.meta["std"], **self.meta["arch_params"])


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write(path: Path, write: Any) -> None:
    """Write through a temporary file in the same folder, fsync, then rename over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_checkpoint(folder: Path, model: nn.Module, meta: dict[str, Any]) -> Checkpoint:
    """Write ``model``'s state and ``meta`` (plus the weights' sha256) into ``folder`` atomically.

    meta.json is written last, so a folder with a meta.json always has matching weights."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    weights = folder / WEIGHTS_FILE
    header = {MODEL_FIELD: json.dumps(model_description(meta), sort_keys=True, default=str)}
    atomic_write(weights, lambda tmp: save_file(state, str(tmp), metadata=header))
    full_meta = {"format": META_FORMAT, **meta, "sha256": file_sha256(weights)}
    missing = [k for k in REQUIRED_META if k not in full_meta]
    if missing:
        raise CheckpointError(f"checkpoint meta lacks {missing}")
    text = json.dumps(full_meta, indent=2, sort_keys=True)
    atomic_write(folder / META_FILE, lambda tmp: tmp.write_text(text))
    return Checkpoint(folder, full_meta)


def read_checkpoint(folder: str | Path) -> Checkpoint:
    """Parse meta.json of a checkpoint folder (no weights are read)."""
    folder = Path(folder)
    meta_path = folder / META_FILE
    if not meta_path.is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise CheckpointError(f"{folder}: expected a checkpoint folder with {WEIGHTS_FILE} and "
                              f"{META_FILE}")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{meta_path}: not valid JSON ({err})") from None
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise CheckpointError(f"{meta_path}: missing fields {missing}")
    return Checkpoint(folder, meta)


def verify_checkpoint(checkpoint: Checkpoint) -> None:
    """Raise if the weights file's sha256 differs from the one recorded in meta.json."""
    actual = file_sha256(checkpoint.path / WEIGHTS_FILE)
    if actual != checkpoint.sha256:
        raise CheckpointError(f"{checkpoint.path / WEIGHTS_FILE}: sha256 {actual} does not match "
                              f"the recorded {checkpoint.sha256}; the file was modified or corrupted")


def read_weights_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and header fields of a safetensors file; a file that is not one (truncated,
    written by another tool) is a ``CheckpointError``, whatever sha256 its meta.json records."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
        return load_file(str(path)), header
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: not a readable safetensors file ({first})") from None


def check_model_description(checkpoint: Checkpoint, header: dict[str, str]) -> None:
    """The weights must have been saved for the model meta.json describes (files written before
    the header recorded it are taken as they are)."""
    recorded = header.get(MODEL_FIELD)
    if recorded is None:
        return
    described = json.loads(json.dumps(model_description(checkpoint.meta), sort_keys=True, default=str))
    if json.loads(recorded) != described:
        raise CheckpointError(f"{checkpoint.path}: meta.json describes the model {described}, but the weights "
                              f"were saved for {json.loads(recorded)}")


def load_checkpoint(folder: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, Checkpoint]:
    """Verify, build and load a checkpoint; the model is returned in eval mode on ``device``."""
    checkpoint = read_checkpoint(folder)
    verify_checkpoint(checkpoint)
    state, header = read_weights_file(checkpoint.path / WEIGHTS_FILE)
    check_model_description(checkpoint, header)
    try:
        model = checkpoint.build()
    except AdvarenaError:
        raise
    except Exception as err:  # the recorded architecture cannot take the recorded input shape
        raise CheckpointError(f"{checkpoint.path}: cannot build architecture {checkpoint.meta['arch']!r} for input "
                              f"{tuple(checkpoint.meta['input_shape'])}: {str(err).splitlines()[0]}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{checkpoint.path}: weights do not fit architecture "
                              f"{checkpoint.meta['arch']!r}: {str(err).splitlines()[0]}") from None
    return model.to(device).eval(), checkpoint


def load_aux(classifier_folder: str | Path, name: str,
             device: str | torch.device = "cpu") -> tuple[nn.Module, Checkpoint]:
    """Load the auxiliary network ``name`` (a generator, an attacker) that a training run saved beside
    its classifier checkpoint, verifying the sha256 the classifier's meta.json recorded for it."""
    classifier = read_checkpoint(classifier_folder)
    saved = classifier.meta.get("aux", {})
    if name not in saved:
        raise CheckpointError(f"{classifier_folder}: the run saved no {name!r} network "
                              f"(saved: {sorted(saved) or 'none'})")
    module, checkpoint = load_checkpoint(saved[name]["path"], device)
    if checkpoint.sha256 != saved[name]["sha256"]:
        raise CheckpointError(f"{saved[name]['path']}: sha256 differs from the one its classifier recorded")
    return module, checkpoint
