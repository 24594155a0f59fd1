"""RobustBench-format checkpoints loaded into our zoo architectures.

RobustBench's model zoo (Croce et al. 2021, "RobustBench: a standardized adversarial robustness
benchmark") ships its CIFAR models as torch files holding a state dict, usually under
``state_dict`` and with DataParallel's ``module.`` prefix, for the architectures of
``robustbench/model_zoo/architectures``. Those that match ours block for block load here:

* ``WideResNet`` (Zagoruyko & Komodakis 2016, RobustBench's ``wide_resnet.py``): ``conv1`` ->
  ``stem``; ``block{s}.layer.{i}.{bn1,conv1,bn2,conv2}`` -> ``blocks.{n}.{same}`` with ``n`` the
  running block index; ``block{s}.layer.{i}.convShortcut`` -> ``blocks.{n}.shortcut``; the final
  ``bn1`` -> ``bn``; ``fc`` -> ``fc``. Depth and width come from ``--arch`` (wrn-28-10, wrn-34-10,
  wrn-34-20, wrn-70-16: the families most Linf CIFAR-10 leaderboard entries use).
* ``PreActResNet`` (He et al. 2016, RobustBench's ``resnet.py``): ``conv1`` -> ``stem``;
  ``layer{l}.{i}.{bn1,conv1,bn2,conv2}`` -> ``blocks.{2(l-1)+i}.{same}``; ``layer{l}.{i}.shortcut.0``
  -> ``blocks.{n}.shortcut``; ``bn`` -> ``bn``; ``linear`` -> ``fc``.

Both take [0, 1] pixels; a file with ``mu``/``sigma`` tensors (a model normalizing inside) gives our
input normalization those values, else it is the identity (mean 0, std 1). A file whose keys do not
map exactly onto the architecture is one error naming the missing and the unexpected keys."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from bench.errors import CheckpointError
from bench.models import build_model


@dataclass(frozen=True)
class RobustBenchArch:
    """One RobustBench architecture we load: our zoo builder and parameters, and its key mapping."""

    zoo_arch: str
    params: dict[str, Any] = field(default_factory=dict)
    family: str = "wrn"   # "wrn" or "preact"


ARCHS: dict[str, RobustBenchArch] = {
    "wrn-28-10": RobustBenchArch("wrn-28-10", {}),
    "wrn-34-10": RobustBenchArch("wrn-28-10", {"depth": 34}),
    "wrn-34-20": RobustBenchArch("wrn-28-10", {"depth": 34, "widen_factor": 20}),
    "wrn-70-16": RobustBenchArch("wrn-28-10", {"depth": 70, "widen_factor": 16}),
    "preact-resnet18": RobustBenchArch("preact-resnet18", {}, family="preact"),
}
#: Containers a RobustBench-style file may hold its state dict under.
WRAPPERS = ("state_dict", "model_state_dict", "model")
THREAT_MODELS = ("Linf", "L2", "corruptions")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a RobustBench-format torch file, loaded with ``weights_only=True`` (never
    unpickling code), unwrapped from ``state_dict``/``model`` and stripped of ``module.``."""
    if not path.is_file():
        raise CheckpointError(f"RobustBench checkpoint {path} does not exist")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors of every kind: a file that is not a weights-only torch file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: not a torch weights file loadable with weights_only=True ({first})") from None
    while isinstance(loaded, dict) and any(k in loaded for k in WRAPPERS) and not _is_state(loaded):
        loaded = loaded[next(k for k in WRAPPERS if k in loaded)]
    if not _is_state(loaded):
        raise CheckpointError(f"{path}: expected a state dict of tensors (or one under {'/'.join(WRAPPERS)}), "
                              f"got {type(loaded).__name__}")
    return {re.sub(r"^module\.", "", key): value for key, value in loaded.items()}


def _is_state(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def _wrn_key(key: str, blocks_per_stage: int) -> str:
    if match := re.fullmatch(r"block(\d+)\.layer\.(\d+)\.(.+)", key):
        stage, index, rest = int(match[1]), int(match[2]), match[3]
        rest = rest.replace("convShortcut", "shortcut")
        return f"blocks.{(stage - 1) * blocks_per_stage + index}.{rest}"
    return re.sub(r"^conv1\.", "stem.", re.sub(r"^bn1\.", "bn.", key))


def _preact_key(key: str, blocks_per_stage: int) -> str:
    if match := re.fullmatch(r"layer(\d+)\.(\d+)\.(.+)", key):
        stage, index, rest = int(match[1]), int(match[2]), match[3]
        rest = re.sub(r"^shortcut\.0\.", "shortcut.", rest)
        return f"blocks.{(stage - 1) * blocks_per_stage + index}.{rest}"
    return re.sub(r"^conv1\.", "stem.", re.sub(r"^linear\.", "fc.", key))


MAPPERS: dict[str, Callable[[str, int], str]] = {"wrn": _wrn_key, "preact": _preact_key}


def load_robustbench(path: Path, arch: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Our zoo model of RobustBench architecture ``arch`` holding the weights of ``path``, in eval
    mode on the CPU."""
    if arch not in ARCHS:
        raise CheckpointError(f"--arch {arch!r} is not a RobustBench architecture advarena loads; "
                              f"expected one of {sorted(ARCHS)}")
    spec = ARCHS[arch]
    state = read_state_dict(path)
    mean, std = [0.0] * input_shape[0], [1.0] * input_shape[0]
    if "mu" in state and "sigma" in state:
        mean, std = state.pop("mu").flatten().tolist(), state.pop("sigma").flatten().tolist()
    model = build_model(spec.zoo_arch, input_shape, num_classes, mean, std, **spec.params)
    ours = model.state_dict()
    per_stage = (spec.params.get("depth", 28) - 4) // 6 if spec.family == "wrn" else 2
    mapped = {MAPPERS[spec.family](key, per_stage): value for key, value in state.items()}
    expected = {k for k in ours if not k.startswith("normalize.")}
    missing, unexpected = sorted(expected - set(mapped)), sorted(set(mapped) - expected)
    inverse = {MAPPERS[spec.family](key, per_stage): key for key in state}
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not fit RobustBench architecture {arch}: missing keys {_few(missing)}, unexpected keys "
            f"{_few([inverse[k] for k in unexpected])}")
    shapes = [f"{inverse[k]} {tuple(v.shape)} vs {tuple(ours[k].shape)}" for k, v in mapped.items()
              if v.shape != ours[k].shape]
    if shapes:
        raise CheckpointError(f"{path} does not fit RobustBench architecture {arch} on input {tuple(input_shape)} "
                              f"with {num_classes} classes: shapes differ for {_few(shapes)}")
    model.load_state_dict({**mapped, **{k: v for k, v in ours.items() if k.startswith("normalize.")}}, strict=True)
    return model.eval()


def _few(items: list[str], shown: int = 6) -> str:
    if not items:
        return "none"
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return "[" + ", ".join(items[:shown]) + "]" + more
