"""Content keys are a contract with every existing store: each shipped protocol's attacks and
evaluation key, each shipped suite's training jobs and the code versions hash exactly as 542e034's
code hashed them (recorded in tests/data/content_keys_542e034.json by tests/content_keys.py, left
as recorded); the jobs and protocols changed on purpose since are named below and must differ."""

import json
from pathlib import Path

import pytest

from content_keys import current_keys

RECORDED = json.loads((Path(__file__).parent / "data" / "content_keys_542e034.json").read_text())
#: Protocols bumped since the recording, on purpose (a new version with other attacks), and the
#: archived file that keeps the recorded version: that file must still hash as recorded.
ARCHIVE = Path(__file__).parents[1] / "bench" / "configs" / "protocols" / "archive"
BUMPED = {"full": ARCHIVE / "full-v2.yaml", "quick": ARCHIVE / "quick-v3.yaml"}
NOW = current_keys([str(BUMPED.get(name, name)) for name in sorted(RECORDED["protocols"])], sorted(RECORDED["suites"]))


def test_the_code_versions_and_dataset_fingerprints_are_unchanged():
    assert NOW["evaluator_version"] == RECORDED["evaluator_version"]
    assert NOW["training_code_version"] == RECORDED["training_code_version"]
    assert NOW["dataset_fingerprints"] == RECORDED["dataset_fingerprints"]


@pytest.mark.parametrize("protocol", sorted(RECORDED["protocols"]))
def test_a_shipped_protocol_hashes_as_before(protocol):
    assert NOW["protocols"][str(BUMPED.get(protocol, protocol))] == RECORDED["protocols"][protocol]


@pytest.mark.parametrize("protocol", sorted(BUMPED))
def test_a_bumped_protocol_has_a_new_version_and_new_keys(protocol):
    from bench.suite import load_protocol

    archived, current = load_protocol(str(BUMPED[protocol])), load_protocol(protocol)
    assert current.version > archived.version
    bumped = current_keys([protocol], [])["protocols"][protocol]
    assert bumped["content_hash"] != RECORDED["protocols"][protocol]["content_hash"]


#: Jobs a shipped suite gained since the recording, on purpose: sweep points added with
#: ``sweep_of``, which leave the entry's own jobs as they were.
ADDED = {"default": {"fgsm-at@eps=0.1", "pgd-at@eps=0.1"}}
#: Jobs whose configuration changed on purpose since the recording (issue 23: the eFGSM+REC and
#: Fast-AT defaults, with the new ``probe_sample`` hyper-parameter in both, and seeds-a's Fast-AT
#: and Free-AT entries on the papers' MNIST settings).
CHANGED = {"seeds-a": {"efgsm-rec", "fast-at", "fast-at-forced-co", "free-at"}}


@pytest.mark.parametrize("suite", sorted(RECORDED["suites"]))
def test_a_shipped_suite_s_training_jobs_hash_as_before(suite):
    """Every recorded job keeps its label and key; a suite may gain the jobs ADDED names, no others."""
    now, recorded = NOW["suites"][suite], RECORDED["suites"][suite]
    changed = CHANGED.get(suite, set())
    for kind in ("defenses", "surrogates"):
        kept = {label: key for label, key in recorded[kind].items() if label not in changed}
        assert {label: now[kind].get(label) for label in kept} == kept
    for label in changed:   # retrained on purpose: a new key, never an old one reused
        assert now["defenses"][label] != recorded["defenses"][label]
    assert set(now["surrogates"]) == set(recorded["surrogates"])
    assert set(now["defenses"]) - set(recorded["defenses"]) == ADDED.get(suite, set())
