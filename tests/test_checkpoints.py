import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from bench.checkpoints import WEIGHTS_FILE, file_sha256, load_checkpoint, save_checkpoint
from bench.errors import CheckpointError
from bench.models import build_model


def meta(arch="mlp", **params):
    return {"arch": arch, "arch_params": params, "input_shape": [1, 8, 8], "num_classes": 10,
            "mean": [0.5], "std": [0.25], "dataset": {"name": "digits"}, "defense": "standard",
            "hparams": {}, "seed": 0, "epoch": 1}


def test_roundtrip_is_exact(tmp_path):
    model = build_model("mlp", (1, 8, 8), 10, [0.5], [0.25], hidden=(16,))
    saved = save_checkpoint(tmp_path / "ck", model, meta(hidden=[16]))
    loaded, checkpoint = load_checkpoint(tmp_path / "ck")
    assert checkpoint.sha256 == saved.sha256 and not loaded.training
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(model.eval()(x), loaded(x))
    assert not list((tmp_path / "ck").glob("*.tmp"))


def test_tampered_weights_are_refused(tmp_path):
    model = build_model("mlp", (1, 8, 8), 10, [0.5], [0.25], hidden=(16,))
    save_checkpoint(tmp_path / "ck", model, meta(hidden=[16]))
    weights = tmp_path / "ck" / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(tmp_path / "ck")


def test_weights_for_another_architecture(tmp_path):
    """The weights file records its model, so a meta.json that names another one is refused
    before anything is built."""
    model = build_model("mlp", (1, 8, 8), 10, [0.5], [0.25], hidden=(16,))
    saved = save_checkpoint(tmp_path / "ck", model, meta(hidden=[16]))
    meta_path = tmp_path / "ck" / "meta.json"
    edited = json.loads(meta_path.read_text())
    edited["arch_params"] = {"hidden": [32]}
    meta_path.write_text(json.dumps(edited))
    with pytest.raises(CheckpointError, match="meta.json describes the model .* but the weights were saved for"):
        load_checkpoint(saved.path)


def test_old_weights_for_another_architecture(tmp_path):
    """A file saved before the header recorded its model: the strict load still refuses it."""
    model = build_model("mlp", (1, 8, 8), 10, [0.5], [0.25], hidden=(16,))
    saved = save_checkpoint(tmp_path / "ck", model, meta(hidden=[16]))
    weights = saved.path / WEIGHTS_FILE
    save_file(load_file(str(weights)), str(weights))  # the same tensors, no header
    edited = {**json.loads((saved.path / "meta.json").read_text()), "arch_params": {"hidden": [32]},
              "sha256": file_sha256(weights)}
    (saved.path / "meta.json").write_text(json.dumps(edited))
    with pytest.raises(CheckpointError, match="do not fit architecture"):
        load_checkpoint(saved.path)


def test_a_corrupt_weights_file_with_a_matching_sha256_is_a_checkpoint_error(tmp_path):
    """A truncated or foreign file whose sha256 meta.json records anyway (written by another
    tool) is a CheckpointError, not the safetensors library's own exception."""
    model = build_model("mlp", (1, 8, 8), 10, [0.5], [0.25], hidden=(16,))
    saved = save_checkpoint(tmp_path / "ck", model, meta(hidden=[16]))
    weights = saved.path / WEIGHTS_FILE
    for garbage in (weights.read_bytes()[:100], b"not a safetensors file at all"):
        weights.write_bytes(garbage)
        edited = {**json.loads((saved.path / "meta.json").read_text()), "sha256": file_sha256(weights)}
        (saved.path / "meta.json").write_text(json.dumps(edited))
        with pytest.raises(CheckpointError, match="not a readable safetensors file"):
            load_checkpoint(saved.path)


def test_missing_files(tmp_path):
    with pytest.raises(CheckpointError, match="expected a checkpoint folder"):
        load_checkpoint(tmp_path)
