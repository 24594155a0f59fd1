"""Streaming training batches: the in-memory order, the same batches for any worker count, seeded
augmentation (crop + flip, zero or reflect padding) that evaluation never applies."""

import pytest
import torch

from bench.datasets.loader import Augment, TrainStream, augment_batch
from defenses import build_trainer
from defenses.base import accuracy


def _split(n=37):
    x = torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    return x, torch.arange(n) % 10


def _epochs(stream, count=2):
    return [[(x.clone(), y.clone(), i.clone()) for x, y, i in stream.epoch(e)] for e in range(1, count + 1)]


def test_without_augmentation_the_batches_are_the_in_memory_loop_s():
    x, y = _split()
    stream = TrainStream(x, y, 10, torch.Generator().manual_seed(5), torch.device("cpu"))
    reference = torch.Generator().manual_seed(5)
    for epoch in _epochs(stream, 3):
        order = torch.randperm(37, generator=reference)
        assert [b[2].tolist() for b in epoch] == [order[i:i + 10].tolist() for i in range(0, 37, 10)]
        assert all(torch.equal(bx, x[bi]) and torch.equal(by, y[bi]) for bx, by, bi in epoch)


def test_the_same_seed_gives_the_same_augmented_batches_whatever_the_worker_count():
    x, y = _split()
    augment = Augment(pad_crop=2, hflip=True)
    runs = [_epochs(TrainStream(x, y, 8, torch.Generator().manual_seed(1), torch.device("cpu"), workers,
                                augment, seed=1)) for workers in (0, 2)]
    for epoch_a, epoch_b in zip(*runs):
        for (xa, ya, ia), (xb, yb, ib) in zip(epoch_a, epoch_b):
            assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ia, ib)
    first, second = runs[0]
    assert not torch.equal(first[0][0], x[first[0][2]])  # augmented
    order_1 = torch.cat([b[2] for b in first])
    order_2 = torch.cat([b[2] for b in second])
    assert sorted(order_1.tolist()) == list(range(37)) and not torch.equal(order_1, order_2)


@pytest.mark.parametrize("mode", ["zero", "reflect"])
def test_crops_are_shifted_windows_of_the_padded_image_and_flips_mirror(mode):
    x = torch.rand(64, 1, 6, 6, generator=torch.Generator().manual_seed(2))
    out = augment_batch(x, Augment(pad_crop=2, hflip=True, pad_mode=mode), torch.Generator().manual_seed(3))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect" if mode == "reflect" else "constant")
    found = 0
    for n in range(64):
        windows = [padded[n, :, dy:dy + 6, dx:dx + 6] for dy in range(5) for dx in range(5)]
        matches = [w for w in windows if torch.equal(out[n], w) or torch.equal(out[n], w.flip(2))]
        found += bool(matches)
    assert found == 64
    assert out.shape == x.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    identity = sum(torch.equal(out[n], x[n]) for n in range(64))
    assert identity < 16  # 1/25 shifts are zero and half of those unflipped: ~1 expected


def test_a_suite_s_augmentation_trains_on_augmented_batches_and_tests_on_clean_ones(digits):
    seen = []
    trainer = build_trainer("standard", {"epochs": 1, "batch_size": 256,
                                         "augment": {"pad_crop": 1, "hflip": True}})
    original = trainer.batch_loss

    def spy(model, x, y, ctx):
        seen.append((x.clone(), ctx.index.clone()))
        return original(model, x, y, ctx)

    trainer.batch_loss = spy
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    result = trainer.fit(model, digits, seed=0, progress=False)
    assert any(not torch.equal(x, digits.x_train[i]) for x, i in seen)
    assert result.epochs[0].test_accuracy == accuracy(model, digits.x_test, digits.y_test)
    assert "augment" in trainer.hparams() and "augment" not in build_trainer("standard", {}).hparams()
