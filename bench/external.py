"""Models trained elsewhere: ``advarena eval --model-factory pkg.module:build --weights FILE``.

The factory builds the network (it takes [0, 1] images and returns logits); the weights come from a
``.safetensors`` file, or from a ``.pt``/``.pth``/``.bin`` file read with
``torch.load(weights_only=True)``, which refuses any pickle that is not plain tensors and
containers, without executing it. The weights are copied into an advarena checkpoint (safetensors
plus meta.json with ``arch: external`` and the factory), so audits reload it like any other, and
the store records a training run with ``defense: external`` and the file's provenance."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import pickle
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from attacks.base import canonical_hash
from bench.checkpoints import Checkpoint, file_sha256, save_checkpoint
from bench.datasets import Dataset
from bench.errors import CheckpointError, ConfigError

EXTERNAL_ARCH = "external"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def import_factory(spec: str) -> Callable[..., nn.Module]:
    """``pkg.module:callable`` -> the callable (imported, never evaluated as a string)."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(f"--model-factory expects MODULE:CALLABLE (e.g. mypkg.models:build), got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"--model-factory {spec!r}: cannot import {module_name!r} ({err})") from None
    factory = module
    for part in attribute.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise ConfigError(f"--model-factory {spec!r}: {module_name!r} has no attribute {attribute!r}")
    if not callable(factory):
        raise ConfigError(f"--model-factory {spec!r} is a {type(factory).__name__}, not a callable")
    return factory


def factory_code(spec: str) -> str | None:
    """sha256 of the source file that defines the factory (a plugin's code is part of its model's
    identity: edit the factory and its checkpoints are new ones); None for a factory without one."""
    try:
        source = inspect.getsourcefile(inspect.unwrap(import_factory(spec)))
    except TypeError:  # a builtin or an instance: no source file
        source = None
    if source is None or not Path(source).is_file():
        return None
    return hashlib.sha256(Path(source).read_bytes()).hexdigest()


def build_external(spec: str, kwargs: dict[str, Any], code: str | None = None) -> nn.Module:
    """The factory's network for ``kwargs``; with ``code`` (the stored ``factory_code``), a factory
    whose source changed since is refused."""
    factory = import_factory(spec)
    if code is not None and factory_code(spec) != code:
        raise CheckpointError(f"the code of --model-factory {spec!r} changed since this checkpoint was stored "
                              f"(its source file's sha256 was {code[:12]}); its stored results are for the old code")
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as err:
        accepted = _accepted(factory)
        raise ConfigError(f"--factory-kwargs {json.dumps(kwargs)} do not fit {spec!r}: {err}"
                          f"{f' (it accepts: {accepted})' if accepted else ''}") from None
    except ValueError:  # no signature to check (a builtin): the call below says what is wrong
        pass
    try:
        model = factory(**kwargs)
    except Exception as err:  # the user's factory failing on these arguments: one line, naming it
        raise ConfigError(f"--model-factory {spec!r} raised {type(err).__name__} with --factory-kwargs "
                          f"{json.dumps(kwargs)}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
                          ) from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"--model-factory {spec!r} returned a {type(model).__name__}, expected a torch.nn.Module")
    return model


def _accepted(factory: Callable[..., Any]) -> str:
    try:
        params = inspect.signature(factory).parameters.values()
    except ValueError:
        return ""
    return ", ".join(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors, or from a torch file loaded with ``weights_only=True`` (a dict
    holding it under ``state_dict`` or ``model`` is unwrapped)."""
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None
    if path.suffix not in PICKLE_SUFFIXES:
        raise CheckpointError(f"{path}: expected a .safetensors file or a torch file ({', '.join(PICKLE_SUFFIXES)})")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: refused to load: it is not plain tensors (torch.load with "
                              f"weights_only=True rejected it: {first}); save a state_dict or use safetensors"
                              ) from None
    except (RuntimeError, OSError, EOFError) as err:
        raise CheckpointError(f"{path}: not a readable torch file ({err})") from None
    for key in ("state_dict", "model"):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
    if not isinstance(loaded, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in loaded.items()):
        raise CheckpointError(f"{path}: expected a state dict (names to tensors), got {type(loaded).__name__}")
    return loaded


def check_on_dataset(model: nn.Module, dataset: Dataset, spec: str) -> None:
    """The model must map two of the dataset's images to (2, num_classes) logits."""
    x = dataset.x_test[:2].to(next(model.parameters()).device)
    try:
        with torch.no_grad():
            logits = model.eval()(x)
    except RuntimeError as err:
        raise ConfigError(f"model from {spec!r} fails on {dataset.name} images of shape "
                          f"{tuple(x.shape)}: {str(err).splitlines()[0]}") from None
    if not torch.is_tensor(logits) or tuple(logits.shape) != (2, dataset.num_classes):
        shape = tuple(logits.shape) if torch.is_tensor(logits) else type(logits).__name__
        raise ConfigError(f"model from {spec!r} returned {shape} for 2 {dataset.name} images; expected logits "
                          f"of shape (2, {dataset.num_classes})")


def load_external(spec: str, weights: Path, kwargs: dict[str, Any], dataset: Dataset,
                  device: torch.device) -> tuple[nn.Module, str]:
    """Build, load (strictly) and check an external model; returns it with its weights' sha256."""
    model = build_external(spec, kwargs)
    state = read_weights(weights)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{weights}: weights do not fit the model from {spec!r}: "
                              f"{str(err).splitlines()[0]}") from None
    model.to(device)
    check_on_dataset(model, dataset, spec)
    return model, file_sha256(weights)


def external_provenance(spec: str, kwargs: dict[str, Any], weights: Path, weights_sha: str) -> dict[str, Any]:
    """Where an external model comes from: its factory, the factory's arguments and code, and the
    weights file; everything but the file's path is its identity."""
    return {"provenance": "external", "factory": spec, "factory_kwargs": kwargs, "factory_code": factory_code(spec),
            "weights_file": str(weights.resolve()), "weights_sha256": weights_sha}


def external_key(provenance: dict[str, Any], dataset_fingerprint: str) -> str:
    """The stored run's key: the model's identity (factory, arguments, code, weights) and the data."""
    return canonical_hash({"external": {k: v for k, v in provenance.items() if k != "weights_file"},
                           "dataset": dataset_fingerprint})


def save_external(folder: Path, model: nn.Module, provenance: dict[str, Any], label: str,
                  dataset: Dataset, benign_accuracy: float | None) -> Checkpoint:
    """Copy an external model into an advarena checkpoint folder (rebuilt by its factory)."""
    meta = {"arch": EXTERNAL_ARCH, "arch_params": {}, "factory": provenance["factory"],
            "factory_kwargs": provenance["factory_kwargs"], "factory_code": provenance["factory_code"],
            "input_shape": list(dataset.input_shape),
            "num_classes": dataset.num_classes, "mean": list(dataset.channel_mean), "std": list(dataset.channel_std),
            "dataset": {"name": dataset.name, "fingerprint": dataset.fingerprint()}, "defense": "external",
            "hparams": provenance, "seed": 0, "epoch": 0, "label": label,
            "benign_accuracy": benign_accuracy, "provenance": "external"}
    return save_checkpoint(folder, model, json.loads(json.dumps(meta)))
