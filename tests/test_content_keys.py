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


#: Attack ids whose keys changed on purpose since the recording, in every version of a protocol:
#: the transfer attacks now craft their points to the last step on the source (TRANSFER_CRAFTING
#: below), so the evaluation keys that hash them changed too.
RECRAFTED = {"quick": {"transfer-pgd40-linf-0.3"}, "full": {"transfer-pgd40-linf-0.3"}}


@pytest.mark.parametrize("protocol", sorted(RECORDED["protocols"]))
def test_a_shipped_protocol_hashes_as_before(protocol):
    now, recorded = NOW["protocols"][str(BUMPED.get(protocol, protocol))], RECORDED["protocols"][protocol]
    changed = RECRAFTED.get(protocol, set())
    assert {k: now[k] for k in ("content_hash", "subset")} == {k: recorded[k] for k in ("content_hash", "subset")}
    assert set(now["attacks"]) == set(recorded["attacks"]) and changed <= set(recorded["attacks"])
    for attack_id, key in recorded["attacks"].items():
        assert (now["attacks"][attack_id] == key) == (attack_id not in changed), attack_id
    assert (now["evaluation_key"] == recorded["evaluation_key"]) == (not changed)


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


#: Versions whose only change is how transfer attacks craft their points (run to the last step on
#: the source instead of frozen at its first success there): the archived file is the version before.
TRANSFER_CRAFTING = {"quick": "quick-v4.yaml", "full": "full-v3.yaml", "mnist-linf": "mnist-linf-v1.yaml",
                     "cifar10-l2": "cifar10-l2-v1.yaml", "cifar10-linf": "cifar10-linf-v1.yaml",
                     "cifar10-linf-full": "cifar10-linf-full-v1.yaml", "cifar100-linf": "cifar100-linf-v1.yaml",
                     "svhn-linf": "svhn-linf-v1.yaml"}


#: quick v5 and full v4 also take PGD-Linf steps of 0.025 (converged in 40 steps), on purpose: the
#: PGD-40 Linf rows (with their eps grid) and the transfer attack built on the same PGD.
RESTEPPED = {name: {"pgd40-linf-0.3", "pgd40-linf-0.3@0.1", "pgd40-linf-0.3@0.2", "transfer-pgd40-linf-0.3"}
             for name in ("quick", "full")}


def _attack_keys(protocol) -> dict[str, tuple[str, str]]:
    from torch import nn

    from attacks import ATTACKS
    from content_keys import ZERO_SHA

    keys = {}
    for spec, _ in protocol.expanded_attacks():
        extra = {"source_model": nn.Identity(), "source_id": ZERO_SHA} if spec.source else {}
        keys[spec.id] = (spec.attack, ATTACKS.create(spec.attack, **spec.params, **extra).key())
    return keys


@pytest.mark.parametrize("protocol", sorted(TRANSFER_CRAFTING))
def test_the_transfer_crafting_bump_is_a_new_version_of_the_same_attacks(protocol):
    """The archived version lists the same attacks (today's code hashes both alike); what changed is
    the transfer attacks' crafting, which their keys carry (``run_all_steps`` in the base's config),
    so no store's old transfer rows are read as new ones."""
    from torch import nn

    from attacks import ATTACKS
    from bench.suite import load_protocol

    archived, current = load_protocol(str(ARCHIVE / TRANSFER_CRAFTING[protocol])), load_protocol(protocol)
    assert current.version == archived.version + 1
    assert current.content_hash() != archived.content_hash()
    before, after = _attack_keys(archived), _attack_keys(current)
    restepped = RESTEPPED.get(protocol, set())
    assert set(before) == set(after) and restepped <= set(after)
    assert {i: k for i, k in before.items() if i not in restepped} == {i: k for i, k in after.items() if i not in restepped}
    assert all(before[i] != after[i] for i in restepped)
    transfers = [(spec, ATTACKS.create(spec.attack, **spec.params, source_model=nn.Identity(), source_id="s"))
                 for spec, _ in current.expanded_attacks() if spec.attack == "transfer"]
    assert transfers and all(attack.config()["base"]["run_all_steps"] is True for _, attack in transfers)
