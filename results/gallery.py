"""The adversarial-example gallery: each evaluation's gallery file (``bench.evaluate.write_gallery``)
drawn as small PNGs: the clean image, its adversarial version under every attack, and the
perturbation amplified to the full colour range, with the true and predicted labels."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


@dataclass(frozen=True)
class Tile:
    """One gallery image of one attack: PNG paths relative to the report folder, labels, norms."""

    example_index: int
    label: int
    clean_pred: int
    adv_pred: int
    clean: str
    adversarial: str
    perturbation: str
    linf: float
    l2: float

    @property
    def fooled(self) -> bool:
        return self.clean_pred == self.label and self.adv_pred != self.label

    @property
    def clean_correct(self) -> bool:
        return self.clean_pred == self.label


def load(workdir: Path, pointer: dict | None) -> dict[str, np.ndarray] | None:
    """The arrays of an evaluation's gallery file, or None when it has none or the file is missing
    or does not match its sha256 (recomputed as ``write_gallery`` does)."""
    if not pointer:
        return None
    path = workdir / pointer["file"]
    try:
        with np.load(path) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError):
        return None
    digest = hashlib.sha256(b"".join(name.encode() + arrays[name].tobytes() for name in sorted(arrays))).hexdigest()
    return arrays if digest == pointer["sha256"] else None


def _image(array: np.ndarray) -> np.ndarray:
    """(C, H, W) -> what ``imsave`` takes: (H, W) for one channel, (H, W, C) for colour."""
    return array[0] if array.shape[0] == 1 else np.transpose(array, (1, 2, 0))


def _save(path: Path, array: np.ndarray, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    plt.imsave(path, array, metadata={"Software": None}, **kwargs)


def draw(arrays: dict[str, np.ndarray], out: Path, folder: str) -> tuple[list[Tile], dict[str, list[Tile]]]:
    """Write the PNGs under ``out / folder``; returns the clean tiles' data (no attack) and the
    tiles per attack id. Perturbations use a diverging map scaled to +-max|delta| of that image
    (grey: 0); colour images show 0.5 + delta / (2 max|delta|)."""
    clean = arrays["clean"].astype(np.float32)
    gray = clean.shape[1] == 1
    attacks = [name.removeprefix("adv/") for name in arrays if name.startswith("adv/")]
    clean_paths = []
    for i, image in enumerate(clean):
        path = f"{folder}/clean-{i}.png"
        _save(out / path, _image(image), **({"cmap": "gray", "vmin": 0, "vmax": 1} if gray else {}))
        clean_paths.append(path)
    per_attack: dict[str, list[Tile]] = {}
    for attack in attacks:
        adversarial = arrays[f"adv/{attack}"].astype(np.float32)
        tiles = []
        for i, (x, x_adv) in enumerate(zip(clean, adversarial)):
            delta = x_adv - x
            size = float(np.abs(delta).max())
            adv_path, delta_path = f"{folder}/{attack}/adv-{i}.png", f"{folder}/{attack}/delta-{i}.png"
            _save(out / adv_path, _image(x_adv), **({"cmap": "gray", "vmin": 0, "vmax": 1} if gray else {}))
            if gray:
                _save(out / delta_path, _image(delta), cmap="RdBu_r", vmin=-max(size, 1e-12), vmax=max(size, 1e-12))
            else:
                _save(out / delta_path, _image(np.clip(0.5 + delta / (2 * max(size, 1e-12)), 0, 1)))
            tiles.append(Tile(int(arrays["example_index"][i]), int(arrays["label"][i]), int(arrays["clean_pred"][i]),
                              int(arrays[f"pred/{attack}"][i]), clean_paths[i], adv_path, delta_path, size,
                              float(np.sqrt((delta.astype(np.float64) ** 2).sum()))))
        per_attack[attack] = tiles
    clean_tiles = [Tile(int(arrays["example_index"][i]), int(arrays["label"][i]), int(arrays["clean_pred"][i]),
                        int(arrays["clean_pred"][i]), clean_paths[i], clean_paths[i], "", 0.0, 0.0)
                   for i in range(len(clean))]
    return clean_tiles, per_attack
