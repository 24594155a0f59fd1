"""Reduced precision: bf16 autocast attacks and training on CPU, the fidelity guard (discards and
reruns a low-precision evaluation whose gradients are masked, keeps one that is faithful), and
precision in the content keys."""

import copy

import pytest
import torch
from torch import nn

from attacks import ATTACKS
from bench.evaluate import evaluate_model, evaluation_key
from bench.jobs import plan_training
from bench.precision import AutocastModel, Precision, guard_size, judge, prepare, unwrap
from bench.suite import Protocol, Suite, load_protocol
from defenses import build_trainer


def _protocol(precision: str = "fp32", size: int = 200) -> Protocol:
    return Protocol.model_validate({
        "name": "tiny", "version": 1, "dataset": "digits", "eval_subset": {"size": size, "seed": 0},
        "batch_size": 100, "precision": precision,
        "attacks": [{"id": "pgd10", "attack": "pgd",
                     "params": {"norm": "linf", "eps": 0.1, "steps": 10, "step_size": 0.025, "seed": 0}},
                    {"id": "noise", "attack": "noise", "params": {"norm": "linf", "eps": 0.1, "seed": 0}}]})


class MaskedUnderAutocast(nn.Module):
    """The trained network, except that under autocast its logits carry no gradient (as a model
    whose low-precision forward underflows or saturates would): a gradient attack cannot move."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        logits = self.inner(x)
        if torch.is_autocast_enabled(x.device.type):
            logits = logits.detach() + 0 * logits   # a zero gradient, as underflow gives
        return logits


def test_a_bf16_attack_takes_fp32_gradients_and_matches_fp32_closely(trained_mlp, digits):
    x, y = digits.x_test[:200], digits.y_test[:200]
    attack = ATTACKS.create("pgd", norm="linf", eps=0.1, steps=10, step_size=0.025, seed=0)
    low_model = prepare(trained_mlp, Precision.BF16)
    assert isinstance(low_model, AutocastModel) and unwrap(low_model) is trained_mlp
    probe = x[:4].clone().requires_grad_(True)
    low_model(probe).sum().backward()
    assert probe.grad.dtype == torch.float32 and probe.grad.abs().sum() > 0
    fp32 = attack(trained_mlp, x, y, attack.make_generator(x.device))
    bf16 = attack(low_model, x, y, attack.make_generator(x.device))
    assert bf16.x_adv.dtype == torch.float32
    assert (bf16.x_adv - x).abs().max() <= 0.1 + 1e-6
    assert abs(float(bf16.success.float().mean()) - float(fp32.success.float().mean())) < 0.05


def test_prepare_is_the_identity_in_fp32():
    model = nn.Linear(3, 2)
    assert prepare(model, Precision.FP32) is model


def test_bf16_training_on_cpu_learns_and_saves_fp32_weights(digits):
    from bench.models import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model("mlp", digits.input_shape, 10, digits.channel_mean, digits.channel_std, hidden=(64,))
    before = copy.deepcopy(model.state_dict())
    result = build_trainer("standard", {"epochs": 2, "batch_size": 64}).fit(prepare(model, Precision.BF16), digits,
                                                                          seed=0, progress=False)
    trained = unwrap(result.model)
    assert trained is model and all(v.dtype == torch.float32 for v in trained.state_dict().values())
    assert any(not torch.equal(before[k], v) for k, v in trained.state_dict().items())
    assert result.final_record.test_accuracy > 0.8


def test_the_guard_discards_and_reruns_a_masked_low_precision_evaluation(trained_mlp, digits):
    masked = MaskedUnderAutocast(trained_mlp).eval()
    evaluation, rows = evaluate_model(masked, digits, _protocol("bf16"), {}, torch.device("cpu"), progress=False)
    guard = evaluation["execution"]["fidelity_guard"]
    assert guard["attack_id"] == "pgd10" and guard["n_examples"] == guard_size(200) == 20
    assert not guard["passed"] and guard["low_precision_robust_accuracy"] > guard["fp32_robust_accuracy"] + 0.005
    assert evaluation["execution"]["precision"] == "fp32"
    reference, reference_rows = evaluate_model(masked, digits, _protocol("fp32"), {}, torch.device("cpu"),
                                               progress=False)
    pgd = {r["attack_id"]: r["robust_accuracy"] for r in rows}
    assert pgd["pgd10"] == {r["attack_id"]: r["robust_accuracy"] for r in reference_rows}["pgd10"]


def test_the_guard_keeps_a_faithful_low_precision_evaluation(trained_mlp, digits):
    evaluation, rows = evaluate_model(trained_mlp, digits, _protocol("bf16"), {}, torch.device("cpu"), progress=False)
    assert evaluation["execution"]["fidelity_guard"]["passed"]
    assert evaluation["execution"]["precision"] == "bf16"


@pytest.mark.parametrize("low, high, passed", [(0.50, 0.50, True), (0.505, 0.50, True), (0.51, 0.50, False),
                                               (0.40, 0.50, True)])
def test_the_guard_tolerates_half_a_point(low, high, passed):
    n = 1000
    low_mask = torch.arange(n) < round(low * n)
    high_mask = torch.arange(n) < round(high * n)
    assert judge("pgd", Precision.BF16, low_mask, high_mask).passed is passed


def test_precision_and_compilation_change_the_content_keys_and_fp32_keeps_them():
    protocol = load_protocol("quick")
    keys = {protocol.content_hash(), protocol.executed("bf16").content_hash(),
            protocol.executed("fp16").content_hash(), protocol.executed(compile=True).content_hash()}
    assert len(keys) == 4
    assert protocol.executed("fp32", False).content_hash() == protocol.content_hash()
    attacks = {"pgd": ATTACKS.create("pgd", norm="linf", eps=0.1, steps=2, step_size=0.05)}
    assert evaluation_key("0" * 64, protocol, "s", attacks) != evaluation_key("0" * 64, protocol.executed("bf16"), "s",
                                                                               attacks)
    suite = Suite.model_validate({"name": "s", "defenses": [{"defense": "standard"}]})
    fp32_job = plan_training(suite)[0][0]
    bf16_job = plan_training(suite.model_copy(update={"precision": Precision.BF16}))[0][0]
    assert fp32_job.key("data") != bf16_job.key("data")
    with pytest.raises(ValueError, match="fp16 needs loss scaling"):
        Suite.model_validate({"name": "s", "precision": "fp16", "defenses": [{"defense": "standard"}]})


def test_perf_times_any_zoo_model_per_precision(tmp_path):
    """``advarena perf --model ARCH --shape CxHxW``: random weights and inputs, each precision,
    ours beside torchattacks, and one training step per trainer, written as JSON."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "perf.json"
    run = subprocess.run([sys.executable, "-m", "bench.cli", "perf", "--model", "mlp", "--shape", "1x8x8", "--n", "8",
                          "--batch-size", "8", "--precision", "fp32,bf16", "--only", "PGD-20", "--out", str(out),
                          "--workdir", str(tmp_path / "work"), "--threads", "1"],
                         cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    report = json.loads(out.read_text())
    assert report["shape"] == [1, 8, 8] and set(report["floor"]) == {"fp32", "bf16"}
    rows = {(r["precision"], r["library"]): r for r in report["results"]}
    assert set(rows) == {(p, lib) for p in ("fp32", "bf16") for lib in ("advarena", "torchattacks")}
    assert all(r["case"] == "PGD-20" and r["images_per_s"] > 0 and r["efficiency"] > 0 for r in rows.values())
    assert {(t["precision"], t["trainer"]) for t in report["training"]} == {
        (p, name) for p in ("fp32", "bf16") for name in ("standard", "fgsm-at", "pgd-at", "trades", "free-at",
                                                         "fast-at")}


@pytest.mark.parametrize("params", [
    {"norm": "linf", "eps": 0.1, "steps": 10, "step_size": 0.025, "seed": 0},
    {"norm": "l2", "eps": 1.0, "steps": 10, "step_size": 0.2, "seed": 0, "restarts": 2},
])
def test_the_sync_free_loop_of_accelerators_gives_the_same_results(trained_mlp, digits, monkeypatch, params):
    """On an accelerator the gradient loop never reads a mask on the host (no compaction, no early
    stop); run that path on the CPU and compare with the compacting one: same points, same steps."""
    import attacks.gradient as gradient

    x, y = digits.x_test[:300], digits.y_test[:300]
    attack = ATTACKS.create("pgd", **params)
    compacting = attack(trained_mlp, x, y, attack.make_generator(x.device))
    monkeypatch.setattr(gradient, "sync_free", lambda device: True)
    synced = attack(trained_mlp, x, y, attack.make_generator(x.device))
    assert torch.equal(compacting.x_adv, synced.x_adv)
    assert torch.equal(compacting.success, synced.success)
    if compacting.success_step is not None:
        assert torch.equal(compacting.success_step, synced.success_step)
    assert synced.backward_passes >= compacting.backward_passes


@pytest.mark.slow
def test_a_compiled_model_gives_the_eager_results(trained_mlp, digits):
    """``--compile``: torch.compile of the (autocast) model; needs a C compiler on the CPU."""
    x, y = digits.x_test[:64], digits.y_test[:64]
    attack = ATTACKS.create("pgd", norm="linf", eps=0.1, steps=5, step_size=0.03, seed=0)
    compiled = prepare(trained_mlp, Precision.FP32, compile=True)
    assert unwrap(compiled) is trained_mlp
    eager = attack(trained_mlp, x, y, attack.make_generator(x.device))
    fast = attack(compiled, x, y, attack.make_generator(x.device))
    assert torch.allclose(eager.x_adv, fast.x_adv, atol=1e-5) and torch.equal(eager.success, fast.success)


def test_the_report_shows_how_each_evaluation_ran():
    from types import SimpleNamespace

    import pandas as pd

    from results.tables import environment_table

    guard = {"attack_id": "pgd10", "n_examples": 20, "low_precision": "bf16", "low_precision_robust_accuracy": 0.9,
             "fp32_robust_accuracy": 0.2, "tolerance_points": 0.5, "passed": False}
    frames = SimpleNamespace(checkpoints=pd.DataFrame({"environment": [
        {"device": "cpu"},
        {"device": "cpu", "execution": {"precision": "fp32", "compile": False, "fidelity_guard": guard}}]}))
    table = environment_table(frames)
    assert table["precision"].tolist() == ["fp32", "fp32"]
    assert table["fidelity guard"].tolist() == ["-", "bf16 90.0% vs fp32 20.0% on 20 images: discarded, rerun in fp32"]


def test_low_precision_without_a_gradient_attack_is_refused_before_attacking(trained_mlp, digits):
    from bench.errors import ConfigError

    protocol = Protocol.model_validate({
        "name": "noise-only", "version": 1, "dataset": "digits", "eval_subset": {"size": 20, "seed": 0},
        "precision": "bf16", "attacks": [{"id": "noise", "attack": "noise", "params": {"norm": "linf", "eps": 0.1}}]})
    with pytest.raises(ConfigError, match="no gradient attack for the fidelity guard"):
        evaluate_model(trained_mlp, digits, protocol, {}, torch.device("cpu"), progress=False)
