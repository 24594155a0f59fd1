"""``advarena crosscheck``: the scoring against the per-image best, pass counting around code we
do not own, and the command end to end with our attacks only (the peers are optional installs)."""

import json
import math

import torch

from bench import crosscheck
from bench.crosscheck import Contender


def test_ratios_are_against_the_per_image_best_and_failures_count_as_infinite(trained_mlp, digits):
    x, y = digits.x_test[:40], digits.y_test[:40]

    def scaled(factor):   # a peer that returns a fixed multiple of FMN's perturbation
        def run(model, x, y):
            from attacks import ATTACKS
            return (x + factor * (ATTACKS.create("fmn", steps=30)(model, x, y).x_adv - x)).clamp(0, 1)
        return run

    contenders = [Contender("fmn", "advarena", scaled(1.0)), Contender("twice", "peer", scaled(2.0)),
                  Contender("nothing", "peer", lambda model, x, y: x.clone())]
    outcomes = {o.name: o for o in crosscheck.crosscheck(trained_mlp, x, y, contenders)}
    assert outcomes["fmn"].median_ratio_to_best == 1.0 and outcomes["fmn"].success_percent == 100.0
    assert 1.9 < outcomes["twice"].median_ratio_to_best <= 2.0 + 1e-5
    assert outcomes["nothing"].success_percent == 0.0 and math.isinf(outcomes["nothing"].median_ratio_to_best)
    # passes are counted by a wrapper: FMN's 30 steps, its final check, and the base class's check
    assert outcomes["fmn"].passes_per_image == 30 * 2 + 2
    assert outcomes["nothing"].passes_per_image == 0


def test_the_command_with_our_attacks_only(tmp_path, trained_mlp, digits, capsys, monkeypatch):
    from bench.checkpoints import save_checkpoint
    from bench.cli import main

    monkeypatch.setattr(crosscheck, "OURS", [("fmn-l2 20", "fmn", {"norm": "l2", "steps": 20}, ("g",)),
                                             ("ddn 20", "ddn", {"steps": 20}, ("g",))])
    meta = {"arch": "mlp", "arch_params": {"hidden": [64]}, "dataset": {"name": "digits", "fingerprint": "f"},
            "input_shape": list(digits.input_shape), "num_classes": 10, "mean": digits.channel_mean,
            "std": digits.channel_std, "label": "mlp", "defense": "standard", "hparams": {}, "seed": 0, "epoch": 15}
    checkpoint = save_checkpoint(tmp_path / "ck", trained_mlp, meta)
    out = tmp_path / "cc.json"
    assert main(["crosscheck", str(checkpoint.path), "--images", "30", "--no-peers", "--workdir", str(tmp_path),
                 "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "advarena worst case" in printed and "median_ratio_to_best" in printed
    record = json.loads(out.read_text())
    assert record["images"] == 30 and [o["name"] for o in record["outcomes"]] == [
        "fmn-l2 20", "ddn 20", "advarena worst case", "advarena g worst case"]
    assert record["outcomes"][2]["median_ratio_to_best"] == 1.0
    assert torch.isfinite(torch.tensor(record["outcomes"][0]["median_l2"]))
