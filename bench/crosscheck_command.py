"""The ``advarena crosscheck`` driver: load the checkpoint and its dataset, run the contenders,
print the table, write JSON."""

from __future__ import annotations

import argparse
import json
import logging

import pandas as pd

from bench import crosscheck
from bench.checkpoints import load_checkpoint
from bench.datasets.base import load_dataset
from bench.environment import environment_record
from bench.runner import Context

log = logging.getLogger("advarena")


def run_crosscheck(args: argparse.Namespace, ctx: Context) -> None:
    model, checkpoint = load_checkpoint(args.checkpoint, ctx.device)
    dataset = load_dataset(checkpoint.meta["dataset"]["name"], ctx.data_root)
    n = min(args.images, dataset.x_test.shape[0])
    x, y = dataset.x_test[:n].to(ctx.device), dataset.y_test[:n].to(ctx.device)
    contenders = crosscheck.ours()
    missing: list[str] = []
    if not args.no_peers:
        found, missing = crosscheck.peers(args.peer_steps, args.cw_search_steps, args.cw_steps)
        contenders += found
        for line in missing:
            log.warning("crosscheck: not installed, left out: %s", line)
    outcomes = crosscheck.crosscheck(model, x, y, contenders, progress=lambda line: log.info("crosscheck: %s", line))
    table = pd.DataFrame(crosscheck.as_records(outcomes)).drop(columns="l2_per_image")
    print(f"{checkpoint.meta.get('label', args.checkpoint.name)}: {n} test images, "
          f"{int((model.eval()(x).argmax(1) == y).sum())} clean-correct")
    print(table.to_markdown(index=False, floatfmt=".3f"))
    out = args.out or ctx.workdir / "crosscheck" / f"crosscheck-{args.checkpoint.parent.name or 'checkpoint'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"checkpoint": str(args.checkpoint), "checkpoint_sha256": checkpoint.sha256,
                               "images": n, "peer_steps": args.peer_steps,
                               "cw": [args.cw_search_steps, args.cw_steps or args.peer_steps], "not_installed": missing,
                               "outcomes": crosscheck.as_records(outcomes), "environment": environment_record(ctx.device)},
                              indent=2))
    print(f"wrote {out}")
