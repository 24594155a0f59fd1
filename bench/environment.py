"""The environment record stored with every checkpoint, run and evaluation."""

from __future__ import annotations

import platform
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

TRACKED_PACKAGES = ("torch", "numpy", "safetensors", "sqlalchemy", "pandas", "torchattacks",
                    "pyautoattack", "mlxtend", "scikit-learn")


@lru_cache(maxsize=1)
def harness_commit() -> str | None:
    """Git commit of the advarena checkout, or None when not run from a git checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages whose behaviour can change stored numbers."""
    versions: dict[str, str | None] = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{platform.processor() or platform.machine()}"


def environment_record(device: torch.device) -> dict[str, Any]:
    """What produced a result: versions, device, threads and the harness commit."""
    from bench import __version__

    from bench.plugins import LOADED

    record = {"advarena": __version__, "commit": harness_commit(), "python": platform.python_version(),
              "platform": platform.platform(), "packages": package_versions(),
              "device": describe_device(device), "threads": torch.get_num_threads()}
    if LOADED:  # third-party code that registered defenses, models or attacks
        record["plugins"] = list(LOADED)
    return record
