"""RobustBench-format checkpoints: files written here in RobustBench's own layout, by small
re-implementations of its WideResNet and PreActResNet (robustbench/model_zoo/architectures), load
into our zoo architectures with equal predictions; a file that does not fit is one clear error."""

import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from bench.errors import CheckpointError
from bench.robustbench import ARCHS, load_robustbench

ROOT = Path(__file__).resolve().parents[1]


class RBWideBlock(nn.Module):
    """RobustBench's wide_resnet.BasicBlock (pre-activation; the shortcut taken after bn1-relu
    when the width or stride changes)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.equal = cin == cout
        self.convShortcut = None if self.equal else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x):
        if not self.equal:
            x = F.relu(self.bn1(x))
            out = x
        else:
            out = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return (x if self.equal else self.convShortcut(x)) + out


class RBNetworkBlock(nn.Module):
    def __init__(self, count: int, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(*[RBWideBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1)
                                     for i in range(count)])

    def forward(self, x):
        return self.layer(x)


class RBWideResNet(nn.Module):
    def __init__(self, depth: int, widen: int, num_classes: int = 10) -> None:
        super().__init__()
        n, widths = (depth - 4) // 6, [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.block1 = RBNetworkBlock(n, widths[0], widths[1], 1)
        self.block2 = RBNetworkBlock(n, widths[1], widths[2], 2)
        self.block3 = RBNetworkBlock(n, widths[2], widths[3], 2)
        self.bn1, self.fc = nn.BatchNorm2d(widths[3]), nn.Linear(widths[3], num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.block3(self.block2(self.block1(self.conv1(x))))))
        return self.fc(F.avg_pool2d(out, 8).flatten(1))


class RBPreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False))

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return out + shortcut


class RBPreActResNet18(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1, cin, layers = nn.Conv2d(3, 64, 3, 1, 1, bias=False), 64, []
        for width, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            layers.append(nn.Sequential(RBPreActBlock(cin, width, stride), RBPreActBlock(width, width, 1)))
            cin = width
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.bn, self.linear = nn.BatchNorm2d(512), nn.Linear(512, num_classes)

    def forward(self, x):
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        return self.linear(F.avg_pool2d(F.relu(self.bn(out)), 4).flatten(1))


def _randomized(model: nn.Module, seed: int) -> nn.Module:
    """Random weights and batch-norm statistics (so a swapped key changes the predictions)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                values = torch.rand(tensor.shape, generator=generator) * 0.5 + 0.5 if "running_var" in name \
                    else torch.randn(tensor.shape, generator=generator) * (0.1 if "conv" in name else 0.5)
                tensor.copy_(values)
    return model.eval()


def _write_rb(path: Path, model: nn.Module, wrap: bool = True, extra: dict | None = None) -> Path:
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": {**state, **(extra or {})}} if wrap else state, path)
    return path


@pytest.mark.parametrize("arch, reference", [
    ("wrn-28-10", lambda: RBWideResNet(28, 10)),
    ("wrn-34-10", lambda: RBWideResNet(34, 10)),
    ("preact-resnet18", RBPreActResNet18),
])
def test_a_robustbench_file_loads_with_the_source_model_s_predictions(tmp_path, arch, reference):
    source = _randomized(reference(), seed=1)
    path = _write_rb(tmp_path / "model.pt", source, wrap=arch != "wrn-34-10")
    ours = load_robustbench(path, arch, (3, 32, 32), 10)
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, got = source(x), ours(x)
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
    assert got.argmax(1).tolist() == expected.argmax(1).tolist()


def test_normalization_stored_in_the_file_is_used(tmp_path):
    source = _randomized(RBPreActResNet18(), seed=3)
    mu, sigma = torch.tensor([0.49, 0.48, 0.45]).view(1, 3, 1, 1), torch.tensor([0.25, 0.24, 0.26]).view(1, 3, 1, 1)
    path = _write_rb(tmp_path / "model.pt", source, extra={"mu": mu, "sigma": sigma})
    ours = load_robustbench(path, "preact-resnet18", (3, 32, 32), 10)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.allclose(ours(x), source((x - mu) / sigma), atol=1e-4, rtol=1e-4)


def test_a_file_of_another_architecture_names_missing_and_unexpected_keys(tmp_path):
    path = _write_rb(tmp_path / "model.pt", RBPreActResNet18())
    with pytest.raises(CheckpointError, match=r"does not fit RobustBench architecture wrn-28-10: missing keys "
                                              r"\[.*\] and \d+ more, unexpected keys \[.*layer1\.0"):
        load_robustbench(path, "wrn-28-10", (3, 32, 32), 10)


def test_a_file_that_is_not_weights_only_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "optimizer": object()}, path)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_robustbench(path, "preact-resnet18", (3, 32, 32), 10)
    with pytest.raises(CheckpointError, match="expected one of"):
        load_robustbench(path, "resnet-50", (3, 32, 32), 10)


def _write_cifar10(root: Path, n_test: int) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.RandomState(0)
    for name, n in [*[(f"data_batch_{i}", 2) for i in range(1, 6)], ("test_batch", n_test)]:
        batch = {b"data": rng.randint(0, 256, size=(n, 3072)).astype(np.uint8),
                 b"labels": list(rng.randint(0, 10, size=n))}
        (folder / name).write_bytes(pickle.dumps(batch))


def test_advarena_eval_stores_and_evaluates_a_robustbench_checkpoint(tmp_path):
    _write_cifar10(tmp_path / "data", n_test=8)
    weights = _write_rb(tmp_path / "Wong2020Fast.pt", _randomized(RBPreActResNet18(), seed=5))
    protocol = tmp_path / "tiny.yaml"
    protocol.write_text(textwrap.dedent("""
        name: tiny-cifar
        version: 1
        description: FGSM at 8/255 on 8 CIFAR-10-format images.
        dataset: cifar10
        eval_subset: {size: 8, seed: 0}
        batch_size: 8
        attacks:
          - id: fgsm-linf-8
            attack: fgsm
            params: {norm: linf, eps: 0.0313725, loss: ce, seed: 0}
    """))
    common = ["--workdir", str(tmp_path / "work"), "--data-root", str(tmp_path / "data"), "--quiet"]
    command = [sys.executable, "-m", "bench.cli", "eval", "--robustbench-checkpoint", str(weights), "--arch",
               "preact-resnet18", "--dataset", "cifar10", "--protocol", str(protocol), *common]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "Wong2020Fast: evaluated under tiny-cifar v1" in run.stdout
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "already evaluated" in again.stdout
    wrong = subprocess.run(command[:command.index("--dataset") + 1] + ["svhn"] + command[command.index("--dataset") + 2:],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert wrong.returncode == 2 and wrong.stderr.strip().splitlines() == [
        "advarena: error: --dataset svhn but protocol 'tiny-cifar' evaluates on cifar10"]
