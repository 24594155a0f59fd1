"""``advarena``: run a benchmark suite, train, evaluate a checkpoint, print the leaderboard, write the report."""

from __future__ import annotations

import argparse
import logging
import math
import re
import sys
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from bench.core.console import configure_output
from bench.core.params import printable
from bench.errors import AdvarenaError, ConfigError

if TYPE_CHECKING:   # the commands import these lazily, to keep `advarena --help` fast
    from bench.ray_executor import WorkerSettings
    from bench.runner import Context, TrainedModel
    from bench.suite import Protocol, Suite

DEFAULT_WORKDIR = "advarena-runs"


def _integer_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value
    return parse


_count = _integer_at_least(1)
_natural = _integer_at_least(0)


def _amount(text: str) -> float:
    """An argparse type: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _path(text: str) -> Path:
    """An argparse type: a non-empty path (an empty one would silently mean the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    return Path(text)


class _Parser(argparse.ArgumentParser):
    """argparse with bad arguments reported as every other bad input is: one
    ``advarena: error:`` line (naming the command and ``--help``), exit status 2."""

    def error(self, message: str) -> typing.NoReturn:
        command = self.prog.removeprefix("advarena").strip()
        raise ConfigError(f"{command + ': ' if command else ''}{message} (see {self.prog} --help)")


def _add_common(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("where results go")
    group.add_argument("--workdir", default=DEFAULT_WORKDIR, type=_path,
                       help="folder for the database and checkpoints (default: ./%(default)s)")
    group.add_argument("--db", default=None, metavar="URL",
                       help="SQLAlchemy database URL (default: sqlite:///WORKDIR/advarena.db)")
    group.add_argument("--data-root", default=None, metavar="DIR",
                       help="folder holding file-based datasets (mnist, fashion-mnist, cifar10, "
                            "cifar100, svhn) in their standard formats")
    group.add_argument("--device", default="auto", type=_device_name, metavar="auto|cpu|cuda|cuda:N",
                       help="where to train and attack; auto = cuda when available (default: auto)")
    group.add_argument("--threads", type=_count, default=None,
                       help="torch CPU threads (default: torch's choice)")
    group.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                       help="import MODULE first: it registers defenses, models or attacks (repeatable; "
                            "modules under the advarena.* entry points are imported too)")
    group.add_argument("--no-progress", action="store_true", help="hide progress bars")
    group.add_argument("-q", "--quiet", action="store_true", help="print only results and errors")
    group.add_argument("-v", "--verbose", action="store_true",
                       help="also show what the libraries advarena uses log and warn (hidden by default)")


def _add_executor(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("how jobs run")
    group.add_argument("--executor", default="local", choices=["local", "ray"],
                       help="local: one job after another in this process, with progress bars; ray: every "
                            "training and evaluation job a Ray task (default: %(default)s)")
    group.add_argument("--address", default=None, metavar="ADDR",
                       help="Ray cluster to join, e.g. ray://head:10001 or auto (default: start a local Ray "
                            "instance); the store must be one every node reaches (--db postgresql://...)")
    group.add_argument("--ray-cpus", type=_count, default=None, metavar="N",
                       help="CPUs of the local Ray instance (default: all of this machine's)")
    group.add_argument("--cpus-per-task", type=_amount, default=1.0, metavar="N",
                       help="CPUs each Ray task asks for; it runs torch with that many threads unless "
                            "--threads is given (default: %(default)s); a task asks for 1 GPU when the device "
                            "is cuda")


def _add_training(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("how training runs")
    group.add_argument("--workers", type=_natural, default=0, metavar="N",
                       help="DataLoader worker processes that gather and augment training batches; the "
                            "batches are the same for any N (default: 0, in the training process)")
    group.add_argument("--keep-states", type=_count, default=1, metavar="K",
                       help="finished-epoch training states kept per unfinished run, for mid-run resume "
                            "(default: %(default)s; removed when the run finishes)")


def _add_subset(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--subset", type=_count, default=None, metavar="N",
                        help="evaluate on the first N images of the protocol's eval subset; stored under "
                             "protocol NAME@subsetN, never mixed with full-subset results")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="advarena",
        description="Benchmark adversarial-robustness defenses: train them, attack them all the same "
                    "way, store every per-example outcome, and compare them on a leaderboard.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="train what is missing, evaluate what is missing, print the leaderboard",
                         description="Run a benchmark suite end to end. Jobs whose content key is already "
                                     "stored are skipped, so re-running is cheap and an interrupted run resumes.")
    run.add_argument("suite", nargs="?", default="default",
                     help="shipped suite name or path to a suite .yaml (default: %(default)s)")
    run.add_argument("--protocol", default=None,
                     help="override the suite's protocol: shipped name or path to a .yaml")
    _add_execution(run, training=True)
    _add_subset(run)
    _add_executor(run)
    _add_training(run)
    _add_common(run)

    train = sub.add_parser("train", help="train the suite's missing defenses and surrogates only",
                           description="Train every defense and surrogate of a suite whose training run is "
                                       "not stored yet; evaluate nothing.")
    train.add_argument("suite", nargs="?", default="default",
                       help="shipped suite name or path to a suite .yaml (default: %(default)s)")
    _add_executor(train)
    _add_training(train)
    _add_common(train)

    evaluate = sub.add_parser("eval", help="evaluate one checkpoint under a protocol and store the results",
                              description="Attack one checkpoint folder (weights.safetensors + meta.json), or a "
                                          "model trained elsewhere (--model-factory and --weights), with every "
                                          "attack of a protocol.")
    evaluate.add_argument("checkpoint", type=_path, nargs="?", default=None,
                          help="checkpoint folder (omit with --model-factory)")
    evaluate.add_argument("--model-factory", default=None, metavar="MODULE:CALLABLE",
                          help="build an external model with this callable (it takes [0, 1] images, returns "
                               "logits); needs --weights")
    evaluate.add_argument("--weights", type=_path, default=None, metavar="FILE",
                          help="the external model's weights: .safetensors, or a torch file (.pt/.pth/.bin) "
                               "loaded with weights_only=True")
    evaluate.add_argument("--factory-kwargs", default="{}", metavar="JSON",
                          help="keyword arguments of the factory as a JSON object (default: {})")
    evaluate.add_argument("--robustbench-checkpoint", type=_path, default=None, metavar="FILE",
                          help="a RobustBench model-zoo .pt file (loaded with weights_only=True) for our zoo "
                               "architecture --arch; see bench/robustbench.py for the key mapping")
    evaluate.add_argument("--arch", default=None, metavar="ARCH",
                          help="architecture of --robustbench-checkpoint: wrn-28-10, wrn-34-10, wrn-34-20, "
                               "wrn-70-16 or preact-resnet18")
    evaluate.add_argument("--dataset", default=None, metavar="NAME",
                          help="dataset --robustbench-checkpoint was trained on; must be the protocol's")
    evaluate.add_argument("--threat-model", default="Linf", choices=["Linf", "L2", "corruptions"],
                          help="RobustBench threat model of --robustbench-checkpoint, recorded with it "
                               "(default: %(default)s)")
    evaluate.add_argument("--label", default=None, help="leaderboard label of the external model "
                                                        "(default: the weights file's stem)")
    evaluate.add_argument("--protocol", default="quick",
                          help="shipped protocol name or path to a .yaml (default: %(default)s)")
    _add_execution(evaluate, training=False)
    evaluate.add_argument("--source", action="append", default=[], metavar="ROLE=CHECKPOINT",
                          help="checkpoint folder of the transfer source named ROLE in the protocol "
                               "(repeatable); transfer attacks without a source are an error")
    _add_subset(evaluate)
    _add_common(evaluate)

    board = sub.add_parser("leaderboard", help="print the leaderboard from the store",
                           description="Benign accuracy, robust accuracy per attack and sec/epoch of every "
                                       "stored defense evaluated under a protocol; nothing is recomputed.")
    board.add_argument("--protocol", default="quick", help="protocol name (default: %(default)s)")
    board.add_argument("--format", default="table", choices=["table", "csv", "json", "markdown"],
                       help="output format; csv and json hold every column (default: %(default)s)")
    board.add_argument("--wide", action="store_true",
                       help="table and markdown: every attack column (default: the key columns, fitting 120 "
                            "characters: benign, worst cases, AutoAttack, minimum-norm medians, audit)")
    _add_common(board)

    report = sub.add_parser("report", help="write the static leaderboard site (HTML, Markdown, CSV/JSON, curves)",
                            description="Build the report from the store only: the leaderboard at matched "
                                        "benign accuracy, per-defense tables, seed metrics, the transfer matrix "
                                        "and the curves, as index.html, report.md, tables/*.csv|json and "
                                        "figures/*.png|svg.")
    report.add_argument("--protocol", default="quick", help="protocol name (default: %(default)s)")
    report.add_argument("--out", type=_path, default=None, help="output folder (default: WORKDIR/report)")
    report.add_argument("--target-accuracy", type=_amount, default=None, metavar="PERCENT",
                        help="benign accuracy to match at, in %% (default: the standard model's, per "
                             "architecture)")
    report.add_argument("--match-attack", default=None, metavar="ATTACK_ID",
                        help="attack whose robust accuracy is matched (default: the Linf worst case)")
    report.add_argument("--tolerance", type=_amount, default=0.5, metavar="POINTS",
                        help="nearest-checkpoint tolerance in accuracy points (default: %(default)s)")
    report.add_argument("--eps-ref", action="append", default=[], metavar="ARCH=LABEL",
                        help="reference model of the FGS eps_ref per architecture (repeatable; default: "
                             "its Deep Defense entry, else its standard model)")
    _add_common(report)

    compare = sub.add_parser("compare", help="paired comparison of two entries: difference, 95%% interval, McNemar",
                             description="Compare two final checkpoints (run labels) evaluated on the same images "
                                         "under a protocol, from the stored per-example outcomes: the difference in "
                                         "robust accuracy A - B with its paired bootstrap 95% interval (10,000 "
                                         "resamples, seed 0) and McNemar's exact test on the images robust for one "
                                         "of the two only.")
    compare.add_argument("a", metavar="A", help="run label of the first entry, e.g. standard")
    compare.add_argument("b", metavar="B", help="run label of the second entry, e.g. pgd-at")
    compare.add_argument("--attack", default=None, metavar="ATTACK_ID",
                         help="attack row compared (default: the report's headline, the strongest threat model's "
                              "worst case)")
    compare.add_argument("--protocol", default="quick", help="protocol name (default: %(default)s)")
    _add_common(compare)

    audit = sub.add_parser("audit", help="re-derive stored results from checkpoints; gradient-masking checks",
                           description="Re-hash each checkpoint, reload it, re-run benign accuracy and the "
                                       "chosen stored attacks with the stored seeds and eval subset, diff the "
                                       "environment, run the gradient-masking checks, and store an audit row. "
                                       "Exit status 3 when anything differs.")
    audit.add_argument("target", nargs="?", default=None,
                       help="a checkpoint folder or a run label (omit with --all)")
    audit.add_argument("--all", action="store_true", help="every stored checkpoint that has an evaluation")
    from bench.audit.reproduce import DEFAULT_ATTACKS

    audit.add_argument("--attacks", default=",".join(DEFAULT_ATTACKS),
                       help="comma-separated wildcards over protocol attack ids to re-run (default: %(default)s)")
    audit.add_argument("--protocol", default=None, help="audit the evaluation under this protocol (default: newest)")
    audit.add_argument("--masking-tolerance", type=_amount, default=2.0, metavar="POINTS",
                       help="tolerance of the gradient-masking checks (default: %(default)s)")
    audit.add_argument("--retrain", action="store_true",
                       help="also train each run again from its stored configuration and compare")
    _add_common(audit)

    perf = sub.add_parser("perf", help="time our attacks against torchattacks and pyautoattack; write JSON",
                          description="Run our attacks and the torchattacks / pyautoattack equivalents on the "
                                      "same standard-trained model, images and parameters in one process, with "
                                      "the forward+backward floor measured in the same run. Prints a table and "
                                      "the acceptance checks, writes everything to --out. Re-executes itself "
                                      "with glibc malloc thresholds set (see the README) unless they are set.")
    perf.add_argument("--model", default="mnist-cnn",
                      help="zoo architecture, trained with the suite's 'standard' recipe (default: %(default)s)")
    perf.add_argument("--checkpoint", type=_path, default=None,
                      help="use this checkpoint folder instead of training --model")
    perf.add_argument("--suite", default="default",
                      help="suite whose 'standard' defense and protocol give the recipe and data "
                           "(default: %(default)s)")
    from bench.perf_zoo import parse_precisions, parse_shape

    perf.add_argument("--shape", type=parse_shape, default=None, metavar="CxHxW",
                      help="time --model (random weights unless --checkpoint) on random CxHxW inputs with the "
                           "paper protocols' Linf 8/255 cases (FGSM, PGD-20, APGD-CE, AutoAttack) and one "
                           "training step per trainer, instead of the suite's data")
    perf.add_argument("--classes", type=_count, default=10, help="classes of the --shape model (default: 10)")
    perf.add_argument("--precision", type=parse_precisions, default=[], metavar="P[,P...]",
                      help="with --shape: precisions to time, from fp32, bf16, fp16 (default: fp32)")
    perf.add_argument("--n", type=_count, default=None,
                      help="eval images attacked (default: 1000; 256 with --shape)")
    perf.add_argument("--slow-n", type=_count, default=None,
                      help="images for torchattacks' DeepFool, about 3-7 img/s on 2 cores (default: 250); with "
                           "--shape, images for APGD-CE and AutoAttack (100+ gradient steps each) and the "
                           "training steps' batch (default: 32)")
    perf.add_argument("--batch-size", type=_count, default=250, help="attack batch size (default: %(default)s)")
    perf.add_argument("--only", default="*",
                      help="wildcard over case names: FGSM, PGD-40, MIM-10, PGD-L2-40, DeepFool, CW-L2, "
                           "APGD-CE, AutoAttack (default: all)")
    perf.add_argument("--out", type=_path, default=None,
                      help="JSON output file (default: WORKDIR/perf/perf-MODEL.json)")
    _add_common(perf)

    crosscheck = sub.add_parser(
        "crosscheck", help="our minimum-norm L2 attacks beside adv-lib's and foolbox's; write JSON",
        description="Run our minimum-norm L2 attacks and the peers' (adv-lib ALMA, DDN and FMN, foolbox C&W, "
                    "where installed with --no-deps) on one checkpoint and the first --images "
                    "test images; print success, median and mean L2, the median ratio to the per-image best "
                    "over all of them, and passes per image; write them to --out.")
    crosscheck.add_argument("checkpoint", type=_path, help="checkpoint folder (with weights.safetensors and meta.json)")
    crosscheck.add_argument("--images", type=_count, default=500, help="test images attacked (default: %(default)s)")
    crosscheck.add_argument("--peer-steps", type=_count, default=1000,
                            help="iterations of every peer attack (default: %(default)s)")
    crosscheck.add_argument("--cw-search-steps", type=_count, default=9,
                            help="binary-search rounds of foolbox's C&W (default: %(default)s)")
    crosscheck.add_argument("--cw-steps", type=_count, default=None,
                            help="iterations of each C&W round (default: --peer-steps)")
    crosscheck.add_argument("--no-peers", action="store_true", help="run our attacks only")
    crosscheck.add_argument("--out", type=_path, default=None,
                            help="JSON output file (default: WORKDIR/crosscheck/crosscheck-<checkpoint>.json)")
    _add_common(crosscheck)

    export = sub.add_parser("export", help="write leaderboard entries as RobustBench model_info JSON files",
                            description="One model_info/<dataset>/<threat model>/<label>.json per final defense "
                                        "checkpoint, with clean and AutoAttack accuracy (or the attack --attack "
                                        "names, stated in the file's footnote), eps, architecture and "
                                        "additional_data.")
    export.add_argument("--protocol", default="quick", help="protocol name (default: %(default)s)")
    export.add_argument("--out", type=_path, default=None, help="output folder (default: WORKDIR/model_info)")
    export.add_argument("--attack", default=None, metavar="ATTACK_ID",
                        help="attack row for autoattack_acc when the protocol has no autoattack (e.g. "
                             "worst-case-linf-0.3)")
    export.add_argument("--references", action="store_true",
                        help="write the imported reference files back instead of our entries")
    _add_common(export)

    importing = sub.add_parser("import-reference", help="import RobustBench model_info files as reference rows",
                               description="Store model_info JSON files (or folders of them) as reference rows: "
                                           "the leaderboard and report show them beside our evaluations, marked "
                                           "'reported, not re-evaluated'.")
    importing.add_argument("paths", type=_path, nargs="+", help="model_info .json files or folders")
    _add_common(importing)

    validate = sub.add_parser("validate", help="check suites and protocols without running anything",
                              description="Read each suite or protocol (a shipped name or a .yaml path), build every "
                                          "trainer and attack it names and plan its jobs; nothing is trained, "
                                          "attacked or stored. Exit status 2 at the first problem.")
    validate.add_argument("configs", nargs="+", metavar="SUITE|PROTOCOL",
                          help="shipped suite or protocol names, or paths to .yaml files")
    validate.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                          help="import MODULE first, so its registrations validate (repeatable)")

    estimate = sub.add_parser("estimate", help="passes and device time per job of a suite or protocol, before running it",
                              description="Forward and backward passes per training and evaluation job from the "
                                          "configs, and seconds per job from a short probe on this device (a few "
                                          "minibatches of each trainer on random images of the dataset's shape; "
                                          "each network's forward and backward time for the attacks' pass "
                                          "budgets, an upper bound). Nothing is stored; no data is read.")
    estimate.add_argument("config", metavar="SUITE|PROTOCOL", help="shipped suite or protocol name, or a .yaml path")
    estimate.add_argument("--protocol", default=None, help="a suite's protocol override (default: the suite's)")
    estimate.add_argument("--model", default=None, metavar="ARCH",
                          help="network a protocol alone is estimated for (default: preact-resnet18 for 3-channel "
                               "data, else mnist-cnn)")
    estimate.add_argument("--probe-images", type=_count, default=None, metavar="N",
                          help="images per probe minibatch (default: the batch size on cuda, at most 8 on cpu)")
    estimate.add_argument("--json", action="store_true", help="print the per-job estimates as JSON")
    _add_subset(estimate)
    estimate.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                          help="device to probe; auto = cuda when available (default: auto)")
    estimate.add_argument("--threads", type=_count, default=None, help="torch CPU threads (default: torch's choice)")
    estimate.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                          help="import MODULE first, so its registrations are known (repeatable)")

    listing = sub.add_parser("list", help="list registered names (wildcards allowed)",
                             description="List datasets, models, defenses, attacks, or shipped protocols "
                                         "and suites.")
    listing.add_argument("kind", choices=["datasets", "models", "defenses", "attacks", "protocols", "suites"],
                         help="what to list")
    listing.add_argument("pattern", nargs="?", default="*", help="shell-style wildcard (default: *)")
    listing.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                         help="import MODULE first, so its registrations are listed (repeatable)")
    return parser


def _add_execution(parser: argparse.ArgumentParser, training: bool) -> None:
    what = "attacks and training (training: fp32 or bf16)" if training else "attacks"
    parser.add_argument("--precision", default=None, choices=["fp32", "bf16", "fp16"],
                        help=f"arithmetic of the {what}, overriding the protocol's and suite's; below fp32 a "
                             f"fidelity guard reruns the first gradient attack in fp32 on 10%% of the images and "
                             f"falls back to fp32 where the result is weaker (default: as configured, fp32)")
    parser.add_argument("--compile", action="store_true", default=None,
                        help="torch.compile the model for the attacks (default: as the protocol says, off)")


def _device_name(text: str) -> str:
    """``--device``: auto, cpu, cuda or cuda:N (a GPU by index)."""
    if re.fullmatch(r"auto|cpu|cuda(:\d+)?", text) is None:
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N (N a GPU index), got {text!r}")
    return text


def _device(args: argparse.Namespace) -> torch.device:
    """The device (and torch's CPU threads) the command asks for; changes nothing on disk."""
    if args.device.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(args.device.partition(":")[2] or 0)
        if index >= count:
            raise ConfigError(f"--device {args.device} was asked for, but torch sees "
                              f"{count} CUDA device{'s' if count != 1 else ''}")
    if args.threads:
        torch.set_num_threads(args.threads)
    elif args.command == "perf":
        torch.set_num_threads(min(2, torch.get_num_threads()))
    if args.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(args.device)


def _context(args: argparse.Namespace, device: torch.device | None = None, existing: bool = False) -> Context:
    """Open the store (creating the work directory and an SQLite file unless ``existing``: a
    command that only reads the store refuses to make an empty one)."""
    from bench.runner import Context
    from results.store import Store, default_url

    device = device if device is not None else _device(args)
    url = args.db or default_url(args.workdir)
    if existing and url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise ConfigError(f"no store at {url.removeprefix('sqlite:///')}: run 'advarena run' first, or point "
                          f"--workdir or --db at an existing one")
    created = [folder for folder in [args.workdir, *args.workdir.parents] if not folder.exists()]
    args.workdir.mkdir(parents=True, exist_ok=True)
    try:
        store = Store(url)
    except AdvarenaError:  # a bad --db: leave no empty work directory behind
        for folder in created:
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise
    return Context(store=store, workdir=args.workdir.resolve(), device=device, data_root=args.data_root,
                   progress=not args.no_progress, workers=getattr(args, "workers", 0),
                   keep_states=getattr(args, "keep_states", 1))


def _print_leaderboard(ctx, protocol: str, fmt: str = "table", wide: bool = False) -> None:
    from results.leaderboard import exported, format_table, leaderboard, render

    table = leaderboard(ctx.store, protocol)
    if fmt == "csv":
        sys.stdout.write(exported(table).to_csv(index=False, lineterminator="\n"))
    elif fmt == "json":
        sys.stdout.write(exported(table).to_json(orient="records", indent=2) + "\n")
    elif fmt == "markdown":
        print(render(table, wide, "markdown") if not table.empty else f"no evaluations stored under protocol {protocol!r}")
    else:
        print(format_table(table, protocol, wide))
        _print_references(ctx.store)


def _print_references(store) -> None:
    from results.interop import reference_table

    references = reference_table(store)
    if not references.empty:
        print("\nReported elsewhere, not re-evaluated (imported model_info files):")
        print(references.to_string(index=False, float_format=lambda v: f"{v:.2f}", na_rep="-"))


def cmd_run(args: argparse.Namespace) -> None:
    from bench.suite import load_protocol, load_suite

    suite = load_suite(args.suite)
    protocol = _with_subset(load_protocol(args.protocol or suite.protocol), args.subset).executed(args.precision,
                                                                                             args.compile)
    if args.precision in ("fp32", "bf16"):   # fp16 applies to the attacks only (no loss scaling in training)
        from bench.precision import Precision

        suite = suite.model_copy(update={"precision": Precision(args.precision)})
    ctx = _run_jobs(args, suite, protocol, evaluate=True)[0]
    _print_leaderboard(ctx, protocol.name)


def _with_subset(protocol: Protocol, subset: int | None) -> Protocol:
    """``protocol`` on the first ``subset`` images of its eval subset (``Protocol.on_subset``)."""
    return protocol if subset is None else protocol.on_subset(subset)


def _run_jobs(args: argparse.Namespace, suite: Suite, protocol: Protocol,
              evaluate: bool) -> tuple[Context, list[TrainedModel]]:
    """The suite's missing jobs, on the executor ``--executor`` names; returns the context and the
    trained surrogates and defenses."""
    from bench.datasets import load_dataset

    _check_executor(args)
    device = _device(args)
    dataset = load_dataset(protocol.dataset, args.data_root)  # missing data: nothing written yet
    ctx = _context(args, device)
    if args.executor == "ray":
        from bench.ray_executor import run_suite_on_ray

        return ctx, run_suite_on_ray(suite, protocol, ctx, _worker_settings(args, ctx), args.address,
                                     args.ray_cpus, args.cpus_per_task, evaluate, dataset)
    from bench.runner import run_suite

    return ctx, run_suite(suite, protocol, ctx, evaluate, dataset)


def _check_executor(args: argparse.Namespace) -> None:
    if args.executor == "local" and (args.address is not None or args.ray_cpus is not None):
        raise ConfigError("--address and --ray-cpus are options of --executor ray")
    if args.cpus_per_task <= 0 or (args.ray_cpus is not None and args.ray_cpus < 1):
        raise ConfigError(f"--cpus-per-task must be > 0 and --ray-cpus >= 1, got {args.cpus_per_task} and "
                          f"{args.ray_cpus}")
    if args.executor == "ray" and args.address and (args.db is None or args.db.startswith("sqlite")):
        logging.getLogger("advarena").warning(
            "a Ray cluster with an SQLite store: every node must see %s on a shared filesystem; PostgreSQL "
            "(--db postgresql://...) is the safe choice", args.db or "the workdir's advarena.db")


def _worker_settings(args: argparse.Namespace, ctx: Context) -> WorkerSettings:
    from bench.plugins import LOADED, SEARCH_PATH
    from bench.ray_executor import WorkerSettings

    return WorkerSettings(db_url=ctx.store.url, workdir=str(ctx.workdir), data_root=args.data_root,
                          device=ctx.device.type, threads=args.threads or max(1, int(args.cpus_per_task)),
                          plugins=tuple(LOADED), plugin_paths=tuple(SEARCH_PATH), quiet=args.quiet,
                          verbose=args.verbose)


def cmd_train(args: argparse.Namespace) -> None:
    from bench.suite import load_protocol, load_suite

    suite = load_suite(args.suite)
    for trained in _run_jobs(args, suite, load_protocol(suite.protocol), evaluate=False)[1]:
        print(f"{trained.job.label}: {trained.checkpoint_path}")


def cmd_eval(args: argparse.Namespace) -> None:
    """Every input is read and checked (protocol, model, weights, sources) before the store is
    opened, so a bad one writes nothing."""
    from bench.checkpoints import load_checkpoint
    from bench.datasets import load_dataset
    from bench.evaluate import SourceModel
    from bench.runner import ensure_evaluated
    from bench.suite import load_protocol

    given = [args.checkpoint is not None, args.model_factory is not None, args.robustbench_checkpoint is not None]
    if sum(given) != 1:
        raise ConfigError("give one of: a checkpoint folder, --model-factory with --weights, or "
                          "--robustbench-checkpoint with --arch and --dataset")
    if (args.model_factory is None) != (args.weights is None):
        raise ConfigError("--model-factory and --weights go together")
    if (args.robustbench_checkpoint is None) != (args.arch is None) or \
            (args.robustbench_checkpoint is None) != (args.dataset is None):
        raise ConfigError("--robustbench-checkpoint, --arch and --dataset go together")
    protocol = _with_subset(load_protocol(args.protocol), args.subset).executed(args.precision, args.compile)
    if args.dataset is not None and args.dataset != protocol.dataset:
        raise ConfigError(f"--dataset {args.dataset} but protocol {protocol.name!r} evaluates on {protocol.dataset}")
    kwargs = _json_object(args.factory_kwargs, "--factory-kwargs")
    roles = [_source_role(item) for item in args.source]
    needed = sorted({str(spec.source) for spec, _ in protocol.expanded_attacks() if spec.source_kind == "surrogate"})
    missing = [role for role in needed if role not in dict(roles)]
    if missing:
        raise ConfigError(f"protocol {protocol.name!r} transfers from {missing}: give --source ROLE=CHECKPOINT "
                          f"for each")
    device = _device(args)
    dataset = load_dataset(protocol.dataset, args.data_root)
    if args.model_factory:
        from bench.external import load_external

        model, weights_sha = load_external(args.model_factory, args.weights, kwargs, dataset, device)
    elif args.robustbench_checkpoint:
        from bench.robustbench import load_robustbench

        model = load_robustbench(args.robustbench_checkpoint, args.arch, tuple(dataset.input_shape),
                                 dataset.num_classes).to(device)
    else:
        model, checkpoint = load_checkpoint(args.checkpoint, device)
    loaded = [(role, *load_checkpoint(folder, device)) for role, folder in roles]
    ctx = _context(args, device)
    if args.model_factory:
        from bench.runner import store_external

        checkpoint, checkpoint_id = store_external(model, weights_sha, args.model_factory, args.weights, kwargs,
                                                   args.label or args.weights.stem, dataset, ctx)
    elif args.robustbench_checkpoint:
        from bench.runner import store_robustbench

        checkpoint, checkpoint_id = store_robustbench(model, args.arch, args.robustbench_checkpoint,
                                                      args.threat_model,
                                                      args.label or args.robustbench_checkpoint.stem, dataset, ctx)
    else:
        checkpoint_id = ctx.store.add_checkpoint(None, checkpoint.sha256, str(checkpoint.path), checkpoint.meta,
                                                 final=True)
    if checkpoint.meta["dataset"].get("fingerprint") not in (None, dataset.fingerprint()):
        logging.getLogger("advarena").warning("checkpoint was trained on other data than %s", dataset.name)
    sources = {}
    for role, source_model, source_ckpt in loaded:
        source_id = ctx.store.add_checkpoint(None, source_ckpt.sha256, str(source_ckpt.path),
                                             source_ckpt.meta, final=True)
        sources[role] = SourceModel(source_model, source_ckpt.sha256, source_id)
    label = checkpoint.meta.get("label", checkpoint.path.name)
    ran = ensure_evaluated(model, checkpoint, checkpoint_id, dataset, protocol, sources, ctx, label)
    print(f"{label}: {'evaluated' if ran else 'already evaluated'} under {protocol.name} v{protocol.version}")


def _source_role(item: str) -> tuple[str, str]:
    role, _, folder = item.partition("=")
    if not role or not folder:
        raise ConfigError(f"--source expects ROLE=CHECKPOINT, got {item!r}")
    return role, folder


def _json_object(text: str, option: str) -> dict:
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{option} expects a JSON object, got {text!r} ({err})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{option} expects a JSON object, got {type(value).__name__}")
    return value


def cmd_perf(args: argparse.Namespace) -> None:
    import os

    from bench import perf

    if any(os.environ.get(k) != v for k, v in perf.MALLOC_ENV.items()):
        os.execve(sys.executable, [sys.executable, "-m", "bench.cli", *sys.argv[1:]],
                  {**os.environ, **perf.MALLOC_ENV})
    from bench.perf_command import run_perf

    run_perf(args, _context(args))


def cmd_crosscheck(args: argparse.Namespace) -> None:
    from bench.crosscheck_command import run_crosscheck

    run_crosscheck(args, _context(args))


def cmd_leaderboard(args: argparse.Namespace) -> None:
    _print_leaderboard(_context(args, existing=True), args.protocol, args.format, args.wide)


def cmd_report(args: argparse.Namespace) -> None:
    from results.report import write_report
    from results.tables import MatchingOptions

    if args.target_accuracy is not None and not 0 < args.target_accuracy <= 100:
        raise ConfigError(f"--target-accuracy is a percentage in (0, 100], got {args.target_accuracy}")
    if args.tolerance < 0:
        raise ConfigError(f"--tolerance must be >= 0 accuracy points, got {args.tolerance}")
    references = {}
    for item in args.eps_ref:
        arch, sep, label = item.partition("=")
        if not sep or not arch or not label:
            raise ConfigError(f"--eps-ref expects ARCH=LABEL, got {item!r}")
        references[arch] = label
    ctx = _context(args, existing=True)
    options = MatchingOptions(target=None if args.target_accuracy is None else args.target_accuracy / 100,
                              attack=args.match_attack, tolerance=args.tolerance / 100)
    try:
        index = write_report(ctx.store, args.protocol, args.out or ctx.workdir / "report", options, references,
                             ctx.workdir)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    print(index)


def cmd_compare(args: argparse.Namespace) -> None:
    from results.frames import load_frames
    from results.headline import headline_attack, paired

    frames = load_frames(_context(args, existing=True).store, args.protocol)
    if frames.checkpoints.empty:
        raise ConfigError(f"no evaluations stored under protocol {args.protocol!r}; run 'advarena run' first")
    attack_id = args.attack or headline_attack(frames)
    known = list(dict.fromkeys(frames.attacks.attack_id))
    if attack_id not in known:
        raise ConfigError(f"--attack expects an attack id stored under protocol {args.protocol}, got {attack_id!r} "
                          f"(stored: {', '.join(known)})")
    try:
        result = paired(frames, args.a, args.b, attack_id)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    n = result.n
    print(f"{args.a} vs {args.b}: {attack_id}, protocol {frames.protocol} v{frames.version}, {n} paired images")
    print(f"  robust accuracy   {args.a} {100 * round(result.accuracy_a * n) / n:.1f}%   "
          f"{args.b} {100 * round(result.accuracy_b * n) / n:.1f}%")
    print(f"  difference A - B  {(result.b - result.c) * 100 / n:+.1f} points, 95% paired bootstrap interval "
          f"[{100 * result.low:+.1f}, {100 * result.high:+.1f}]")
    print(f"  McNemar exact     {result.b} images robust for {args.a} only, {result.c} for {args.b} only: "
          f"p = {result.p_value:.2g}")


def cmd_audit(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from bench.audit import DIFFERS, audit_checkpoint, retrain_checkpoint
    from bench.environment import environment_record
    from results.schema import CheckpointRow, Evaluation, TrainingRun

    if bool(args.all) == bool(args.target):
        raise ConfigError("give a checkpoint folder or run label, or --all (not both)")
    ctx = _context(args, existing=True)
    with ctx.store.session() as session:
        query = (select(CheckpointRow, TrainingRun).outerjoin(TrainingRun, CheckpointRow.run_id == TrainingRun.id)
                 .where(CheckpointRow.id.in_(select(Evaluation.checkpoint_id))).order_by(CheckpointRow.id))
        if args.target:
            folder = Path(args.target)
            if folder.is_dir():
                query = query.where(CheckpointRow.path == str(folder.resolve()))
            else:
                query = query.where(TrainingRun.label == args.target, CheckpointRow.final.is_(True))
        targets = session.execute(query).all()
    if not targets:
        raise ConfigError(f"no evaluated checkpoint matches {args.target or '--all'!r} in {ctx.store.url}")
    patterns = tuple(p.strip() for p in args.attacks.split(",") if p.strip())
    environment = environment_record(ctx.device)
    differs = False
    for row, run in targets:
        label = f"{run.label if run else row.meta.get('label', row.path)}" + ("" if row.final else f" epoch {row.epoch}")
        reports = [audit_checkpoint(ctx.store, row, label, ctx.device, patterns, args.data_root, args.protocol,
                                    args.masking_tolerance)]
        if args.retrain and run is not None:
            reports.append(retrain_checkpoint(ctx.store, row, run, ctx.device, args.data_root))
        for kind, report in zip(("reproduce", "retrain"), reports):
            ctx.store.add_audit(**{**report.as_row(environment), "kind": kind})
            differs |= report.verdict == DIFFERS
            raised = [f.check for f in report.flags if f.flagged]
            print(f"{label}: {kind} {report.verdict}" + (f"; masking flags: {', '.join(raised)}" if raised else
                                                          ("; no masking flags" if report.flags else "")))
            for item in report.items:
                print(f"  {item.verdict:13s} {item.name}: {item.detail}")
            for flag in report.flags:
                print(f"  {'FLAG' if flag.flagged else 'ok':13s} {flag.check}: {flag.evidence}")
            if report.environment_diff:
                changed = ", ".join(f"{k} {v[0]} -> {v[1]}" for k, v in report.environment_diff.items())
                print(f"  environment changed: {changed}")
    return 3 if differs else 0


def cmd_export(args: argparse.Namespace) -> None:
    from results.interop import export_model_info, reference_infos, write_model_info

    ctx = _context(args, existing=True)
    out = args.out or ctx.workdir / "model_info"
    if args.references:
        infos = reference_infos(ctx.store)
        if not infos:
            raise ConfigError(f"no reference rows in {ctx.store.url}; import some with 'advarena import-reference'")
        written = [write_model_info(out, info) for info in infos]
    else:
        written = export_model_info(ctx.store, args.protocol, out, args.attack)
    for path in written:
        print(path)


def cmd_import_reference(args: argparse.Namespace) -> None:
    from results.interop import import_model_info, read_model_infos

    parsed = read_model_infos(args.paths)
    ctx = _context(args)
    ids = import_model_info(ctx.store, parsed)
    print(f"imported {len(ids)} reference row(s) (reported, not re-evaluated)")
    _print_references(ctx.store)


def cmd_validate(args: argparse.Namespace) -> None:
    from bench.jobs import plan_training
    from bench.suite import Suite, load_config, load_protocol

    for name in args.configs:
        config = load_config(name)
        if isinstance(config, Suite):
            defenses, surrogates = plan_training(config)
            protocol = load_protocol(config.protocol).with_attacks(config.attacks)
            print(f"suite {config.name}: valid; {len(defenses)} defense and {len(surrogates)} surrogate training "
                  f"job(s) ({', '.join(job.label for job in defenses)}); protocol {protocol.name} "
                  f"v{protocol.version} with {len(protocol.expanded_attacks())} attack runs")
        else:
            print(f"protocol {config.name} v{config.version}: valid; {config.dataset}, "
                  f"{config.eval_subset.size} eval images, {len(config.expanded_attacks())} attack runs "
                  f"({', '.join(spec.id for spec, _ in config.expanded_attacks())})")


def cmd_estimate(args: argparse.Namespace) -> None:
    import json
    from dataclasses import asdict

    from bench.estimate import estimate_evaluation, estimate_suite, format_estimates, split_sizes
    from bench.suite import Suite, load_config, load_protocol

    config = load_config(args.config)
    device = _device(args)
    probe = args.probe_images or (None if device.type == "cuda" else 8)
    if isinstance(config, Suite):
        protocol = _with_subset(load_protocol(args.protocol or config.protocol), args.subset)
        estimates = estimate_suite(config, protocol, device, probe)
    else:
        protocol = _with_subset(config, args.subset)
        shape = split_sizes(protocol.dataset)[2]
        arch = args.model or ("preact-resnet18" if shape[0] == 3 else "mnist-cnn")
        estimates = [estimate_evaluation(protocol, arch, arch, {}, device, probe)]
    if args.json:
        print(json.dumps([asdict(e) for e in estimates], indent=1))
    else:
        print(format_estimates(estimates, device))


def cmd_list(args: argparse.Namespace) -> None:
    from bench.suite import shipped_names

    if args.kind in ("protocols", "suites"):
        import fnmatch

        for name in shipped_names(args.kind[:-1]):
            if fnmatch.fnmatchcase(name, args.pattern):
                print(name)
        return
    registry = _registry(args.kind)
    for name in registry.list(args.pattern):
        entry = registry.get(name)
        print(f"{name:18s} {entry.summary}")


def _registry(kind: str):
    if kind == "datasets":
        from bench.datasets import DATASETS as registry
    elif kind == "models":
        from bench.models import MODELS as registry
    elif kind == "defenses":
        from defenses import DEFENSES as registry
    else:
        from attacks import ATTACKS as registry
    return registry


COMMANDS = {"run": cmd_run, "train": cmd_train, "eval": cmd_eval, "leaderboard": cmd_leaderboard, "compare": cmd_compare,
            "report": cmd_report, "audit": cmd_audit, "list": cmd_list, "perf": cmd_perf, "crosscheck": cmd_crosscheck, "export": cmd_export,
            "import-reference": cmd_import_reference, "validate": cmd_validate, "estimate": cmd_estimate}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except AdvarenaError as err:
        print(f"advarena: error: {printable(str(err))}", file=sys.stderr)
        return err.exit_code
    configure_output(getattr(args, "quiet", False), getattr(args, "verbose", False))
    try:
        from bench.plugins import discover_entry_points, load_plugins

        discover_entry_points()
        load_plugins(getattr(args, "plugin", []), [Path.cwd()])
        status = COMMANDS[args.command](args)
    except AdvarenaError as err:
        print(f"advarena: error: {printable(str(err))}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("advarena: interrupted; stored jobs are kept, re-run to continue", file=sys.stderr)
        return 130
    return status if isinstance(status, int) else 0


if __name__ == "__main__":
    sys.exit(main())
