"""Content keys are a contract with every existing store: each shipped protocol's attacks and
evaluation key, each shipped suite's training jobs and the code versions hash exactly as 542e034's
code hashed them (recorded in tests/data/content_keys_542e034.json by tests/content_keys.py).

Re-recorded on purpose since: seeds-a's efgsm-rec, fast-at, fast-at-forced-co and free-at (issue 23:
the eFGSM+REC and Fast-AT defaults changed, with the new ``probe_sample`` hyper-parameter in both,
and seeds-a's fast-at and free-at entries run the papers' MNIST settings); every other key as recorded."""

import json
from pathlib import Path

import pytest

from content_keys import current_keys

RECORDED = json.loads((Path(__file__).parent / "data" / "content_keys_542e034.json").read_text())
NOW = current_keys(sorted(RECORDED["protocols"]), sorted(RECORDED["suites"]))


def test_the_code_versions_and_dataset_fingerprints_are_unchanged():
    assert NOW["evaluator_version"] == RECORDED["evaluator_version"]
    assert NOW["training_code_version"] == RECORDED["training_code_version"]
    assert NOW["dataset_fingerprints"] == RECORDED["dataset_fingerprints"]


@pytest.mark.parametrize("protocol", sorted(RECORDED["protocols"]))
def test_a_shipped_protocol_hashes_as_before(protocol):
    assert NOW["protocols"][protocol] == RECORDED["protocols"][protocol]


#: Jobs a shipped suite gained since the recording, on purpose: sweep points added with
#: ``sweep_of``, which leave the entry's own jobs as they were.
ADDED = {"default": {"fgsm-at@eps=0.1", "pgd-at@eps=0.1"}}


@pytest.mark.parametrize("suite", sorted(RECORDED["suites"]))
def test_a_shipped_suite_s_training_jobs_hash_as_before(suite):
    """Every recorded job keeps its label and key; a suite may gain the jobs ADDED names, no others."""
    now, recorded = NOW["suites"][suite], RECORDED["suites"][suite]
    for kind in ("defenses", "surrogates"):
        assert {label: now[kind].get(label) for label in recorded[kind]} == recorded[kind]
    assert set(now["surrogates"]) == set(recorded["surrogates"])
    assert set(now["defenses"]) - set(recorded["defenses"]) == ADDED.get(suite, set())
