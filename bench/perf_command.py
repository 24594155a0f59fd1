"""The ``advarena perf`` driver: get the standard-trained model, run the cases, write JSON."""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from bench import perf
from bench.checkpoints import load_checkpoint
from bench.errors import ConfigError
from bench.evaluate import eval_subset
from bench.jobs import plan_training
from bench.precision import Precision
from bench.runner import Context, ensure_trained, load_suite_dataset
from bench.suite import load_protocol, load_suite

log = logging.getLogger("advarena")


def standard_checkpoint(args: argparse.Namespace, ctx: Context) -> Path:
    """The suite's ``standard`` recipe on ``--model`` (trained unless stored)."""
    suite = load_suite(args.suite)
    dataset, dataset_id = load_suite_dataset(load_protocol(suite.protocol), ctx)
    jobs = [job for job in plan_training(suite)[0] if job.defense == "standard"]
    if not jobs:
        raise ConfigError(f"suite {args.suite!r} has no 'standard' defense to take the recipe from")
    job = jobs[0]
    if job.arch != args.model:
        job = dataclasses.replace(job, arch=args.model, arch_params={}, label=f"standard-{args.model}")
    return ensure_trained(job, dataset, dataset_id, ctx).checkpoint_path


def run_perf(args: argparse.Namespace, ctx: Context) -> dict[str, Any]:
    if args.shape is not None:
        return _run_zoo(args, ctx)
    if args.precision:
        raise ConfigError("--precision needs --shape (the suite's model is timed in fp32)")
    args.n = args.n or 1000
    args.slow_n = args.slow_n or 250
    cases = [case for case in perf.CASES if fnmatch.fnmatchcase(case.name, args.only)]
    if not cases:
        raise ConfigError(f"--only {args.only!r} matches no case; cases: {[c.name for c in perf.CASES]}")
    folder = args.checkpoint or standard_checkpoint(args, ctx)
    model, checkpoint = load_checkpoint(folder, ctx.device)
    model.eval()
    protocol = load_protocol(load_suite(args.suite).protocol)
    dataset, _ = load_suite_dataset(protocol, ctx)
    indices = eval_subset(dataset.x_test.shape[0], protocol.eval_subset.size, protocol.eval_subset.seed)
    indices = indices[:args.n]
    x, y = dataset.x_test[indices].to(ctx.device), dataset.y_test[indices].to(ctx.device)
    clean_floor = perf.Floor()
    clean_floor.probe(model, x, y, args.batch_size, repeats=3)  # also warms the allocator
    noise = torch.rand(x.shape, generator=torch.Generator(device=x.device).manual_seed(0), device=x.device)
    probe_x = (x + 0.3 * (2 * noise - 1)).clamp(0, 1)
    floor = perf.Floor()
    floor.probe(model, probe_x, y, args.batch_size, repeats=3)
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    for case in cases:
        rows.extend(perf.run_case(case, model, x, y, probe_x, args.batch_size, args.slow_n, floor, print))
    report = {"env": perf.environment(torch.get_num_threads()),
              "args": {"model": checkpoint.meta.get("arch"), "checkpoint": str(folder),
                       "checkpoint_sha256": checkpoint.sha256, "n": len(indices), "slow_n": args.slow_n,
                       "batch_size": args.batch_size, "only": args.only, "dataset": dataset.name},
              "floor": floor.summary(), "floor_clean_inputs": clean_floor.summary(), "results": rows, "checks": perf.checks(rows),
              "seconds": time.perf_counter() - start}
    out = args.out or ctx.workdir / "perf" / f"perf-{checkpoint.meta.get('arch', 'model')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str))
    print(f"floor: forward {report['floor']['fwd_img_per_s']:.0f} img/s, forward+backward "
          f"{report['floor']['fb_img_per_s']:.0f} img/s ({report['floor']['probes']} probes)")
    for item in report["checks"]:
        print(f"[{'PASS' if item['pass'] else 'FAIL'}] {item['check']}: {item['detail']}")
    print(f"wrote {out}")
    return report


def _run_zoo(args: argparse.Namespace, ctx: Context) -> dict[str, Any]:
    """``--shape``: any zoo model on random inputs, per precision (``bench.perf_zoo``)."""
    from bench.perf_zoo import run_zoo_perf

    args.n = args.n or 256
    args.slow_n = min(args.slow_n or 32, args.n)
    args.precision = args.precision or [Precision.FP32]
    start = time.perf_counter()
    report = {"env": perf.environment(torch.get_num_threads()), "device": str(ctx.device),
              **run_zoo_perf(args, ctx.device, print), "seconds": time.perf_counter() - start}
    shape = "x".join(map(str, args.shape))
    out = args.out or ctx.workdir / "perf" / f"perf-{args.model}-{shape}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str))
    print(f"wrote {out}")
    return report
