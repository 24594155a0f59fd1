"""The content keys every existing store is keyed by, computed from the shipped configs: each
protocol's content hash, attack keys and an evaluation key, each shipped suite's training-job keys,
and the code versions. ``tests/data/content_keys_542e034.json`` holds them as computed by 542e034's
code (``PYTHONPATH=<checkout of 542e034> python tests/content_keys.py OUT.json``); test_content_keys
compares today's with it. Inputs that are not configs are fixed: the embedded mnist5k dataset's
fingerprint for job keys, an all-zero sha256 for checkpoints and transfer sources."""

from __future__ import annotations

import json
import sys
from typing import Any

from torch import nn

#: Stands for a checkpoint's or a transfer source's sha256 in the recorded keys.
ZERO_SHA = "0" * 64


def current_keys(protocols: list[str] | None = None, suites: list[str] | None = None) -> dict[str, Any]:
    """The keys of ``protocols`` and ``suites`` (default: every shipped one; those on file-based
    datasets need them under ``--data-root``, so the test asks for the recorded ones)."""
    from attacks import ATTACKS
    from bench.datasets import load_dataset
    from bench.evaluate import EVALUATOR_VERSION, eval_subset, evaluation_key, subset_hash
    from bench.jobs import TRAINING_CODE_VERSION, plan_training
    from bench.suite import load_protocol, load_suite, shipped_names

    keys: dict[str, Any] = {"evaluator_version": EVALUATOR_VERSION, "training_code_version": TRAINING_CODE_VERSION,
                            "protocols": {}, "suites": {}}
    fingerprints: dict[str, str] = {}
    for name in protocols if protocols is not None else shipped_names("protocol"):
        protocol = load_protocol(name)
        attacks = {}
        for spec, _ in protocol.expanded_attacks():
            extra = {"source_model": nn.Identity(), "source_id": ZERO_SHA} if spec.source else {}
            attacks[spec.id] = ATTACKS.create(spec.attack, **spec.params, **extra)
        dataset = load_dataset(protocol.dataset)
        fingerprints.setdefault(protocol.dataset, dataset.fingerprint())
        subset = subset_hash(eval_subset(int(dataset.x_test.shape[0]), protocol.eval_subset.size, protocol.eval_subset.seed))
        keys["protocols"][name] = {"content_hash": protocol.content_hash(), "subset": subset,
                                   "attacks": {i: a.key() for i, a in sorted(attacks.items())},
                                   "evaluation_key": evaluation_key(ZERO_SHA, protocol, subset, attacks)}
    for name in suites if suites is not None else shipped_names("suite"):
        suite = load_suite(name)
        dataset_name = load_protocol(suite.protocol).dataset
        if dataset_name not in fingerprints:
            fingerprints[dataset_name] = load_dataset(dataset_name).fingerprint()
        fingerprint = fingerprints[dataset_name]
        defenses, surrogates = plan_training(suite)
        keys["suites"][name] = {"defenses": {job.label: job.key(fingerprint) for job in defenses},
                                "surrogates": {role: job.key(fingerprint) for role, job in surrogates.items()}}
    keys["dataset_fingerprints"] = fingerprints
    return keys


if __name__ == "__main__":
    with open(sys.argv[1], "w") as out:
        json.dump(current_keys(), out, indent=1, sort_keys=True)
        out.write("\n")
