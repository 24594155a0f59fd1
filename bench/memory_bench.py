"""Memory benchmark (not a timed test): one training epoch of a width-reduced PreAct-ResNet-18 over a
CIFAR-format training split written to a temporary folder, reporting peak host RSS and peak device
memory as JSON. Each split size runs in its own process, so its peak RSS is its own:

    python -m bench.memory_bench --sizes 10000 50000 --width 8 --out memory.json

Streaming holds the split once in host memory (float32, 12 KiB per image) and a few minibatches on
the device; ``peak_rss_beyond_split`` (peak RSS minus the float32 split) should not grow with the
split size."""

from __future__ import annotations

import argparse
import json
import pickle
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def write_cifar10(folder: Path, n_train: int, n_test: int = 1000, seed: int = 0) -> None:
    """CIFAR-10's python pickle batches (5 training batches and a test batch) of random images."""
    rng = np.random.RandomState(seed)
    folder.mkdir(parents=True, exist_ok=True)
    sizes = [n_train // 5 + (1 if i < n_train % 5 else 0) for i in range(5)]
    for name, n in [*((f"data_batch_{i + 1}", s) for i, s in enumerate(sizes)), ("test_batch", n_test)]:
        batch = {b"labels": rng.randint(0, 10, size=n).tolist(),
                 b"data": rng.randint(0, 256, size=(n, 3072), dtype=np.uint8)}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=4))


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def measure(n_train: int, width: int, batch_size: int, device: torch.device, workers: int) -> dict[str, Any]:
    """Write a split of ``n_train`` images, load it, train one epoch; the numbers of this process."""
    from bench.datasets import load_dataset
    from bench.models import build_model
    from defenses import build_trainer

    baseline = _rss_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        write_cifar10(Path(tmp) / "cifar-10-batches-py", n_train)
        start = time.perf_counter()
        data = load_dataset("cifar10", tmp)
        load_seconds = time.perf_counter() - start
    after_load = _rss_bytes()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model("preact-resnet18", data.input_shape, 10, data.channel_mean, data.channel_std,
                            width=width).to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trainer = build_trainer("standard", {"epochs": 1, "batch_size": batch_size, "optimizer": "sgd", "lr": 0.05,
                                         "augment": {"pad_crop": 4, "hflip": True}})
    start = time.perf_counter()
    result = trainer.fit(model, data, seed=0, progress=False, workers=workers)
    epoch_seconds = time.perf_counter() - start
    split_bytes = data.x_train.numel() * 4 + data.x_test.numel() * 4
    peak = _rss_bytes()
    out = {"n_train": n_train, "n_test": int(data.x_test.shape[0]), "width": width, "batch_size": batch_size,
           "workers": workers, "device": str(device), "threads": torch.get_num_threads(),
           "split_float32_bytes": split_bytes, "rss_before_load_bytes": baseline, "peak_rss_after_load_bytes": after_load,
           "peak_rss_bytes": peak, "peak_rss_beyond_split_bytes": peak - split_bytes,
           "load_seconds": load_seconds, "epoch_seconds": epoch_seconds,
           "train_images_per_second": n_train / epoch_seconds, "test_accuracy": result.epochs[0].test_accuracy,
           "device_peak_bytes": None}
    if device.type == "cuda":
        out["device_peak_bytes"] = torch.cuda.max_memory_allocated(device)
        out["device_split_bytes_if_moved"] = split_bytes
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 50000], help="training split sizes")
    parser.add_argument("--width", type=int, default=8, help="PreAct-ResNet-18 first-stage width (64: full)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default: print only)")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child: one size, JSON on stdout
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(measure(args.sizes[0], args.width, args.batch_size, torch.device(args.device), args.workers)))
        return 0
    results = []
    for size in args.sizes:
        command = [sys.executable, "-m", "bench.memory_bench", "--one", "--sizes", str(size), "--width", str(args.width),
                   "--batch-size", str(args.batch_size), "--workers", str(args.workers), "--device", args.device]
        if args.threads:
            command += ["--threads", str(args.threads)]
        child = subprocess.run(command, capture_output=True, text=True, check=True)
        results.append(json.loads(child.stdout.strip().splitlines()[-1]))
        r = results[-1]
        mib = 2 ** 20
        device_peak = "-" if r["device_peak_bytes"] is None else f"{r['device_peak_bytes'] / mib:.0f} MiB"
        print(f"n_train {size}: peak RSS {r['peak_rss_bytes'] / mib:.0f} MiB (split {r['split_float32_bytes'] / mib:.0f}"
              f" MiB, beyond it {r['peak_rss_beyond_split_bytes'] / mib:.0f} MiB), device peak {device_peak}, "
              f"epoch {r['epoch_seconds']:.0f}s ({r['train_images_per_second']:.0f} img/s)", file=sys.stderr)
    report = {"benchmark": "one epoch, width-reduced PreAct-ResNet-18, CIFAR-format split", "runs": results}
    text = json.dumps(report, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
