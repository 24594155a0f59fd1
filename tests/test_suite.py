import pytest

from bench.errors import ConfigError
from bench.suite import load_protocol, load_suite, shipped_names


@pytest.mark.parametrize("name", shipped_names("suite"))
def test_shipped_suites_validate(name):
    suite = load_suite(name)
    load_protocol(suite.protocol)


@pytest.mark.parametrize("name", shipped_names("protocol"))
def test_shipped_protocols_validate(name):
    assert load_protocol(name).attacks


BASE = """
name: t
defenses:
  - defense: standard
"""


@pytest.mark.parametrize("text,message", [
    (BASE + "    hparams: {epochs: -1}\n", "defenses.0: defense 'standard': epochs: expected an integer >= 1, got -1"),
    (BASE + "  - defense: pgdat\n", "defenses.1: unknown defense 'pgdat'; did you mean 'pgd-at'"),
    (BASE + "colour: blue\n", "colour: unknown field"),
    (BASE + "model: {arch: mlp, params: {depth: 2}}\n", "model: model 'mlp' got unknown parameter"),
    (BASE + "training: {epoch: 3}\n", "training: unknown training setting"),
    ("name: t\ndefenses: [\n", "malformed YAML"),
    (BASE + "  - defense: standard\n", "labels must be unique"),
])
def test_bad_suite_fields_name_their_path(tmp_path, text, message):
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_suite(str(path))
    assert message in str(err.value)


@pytest.mark.parametrize("attack,message", [
    ("{id: a, attack: pgd, params: {eps: 0.3, stepz: 3}}", "attacks.0: attack 'pgd' got unknown parameter"),
    ("{id: a, attack: transfer, params: {base: pgd}}", "needs 'source'"),
    ("{id: a, attack: fgsm, source: s}", "'source' is only for attacks that run a trained network"),
])
def test_bad_protocol_attacks(tmp_path, attack, message):
    path = tmp_path / "p.yaml"
    path.write_text(f"name: p\nversion: 1\ndataset: digits\neval_subset: {{size: 10}}\nattacks:\n  - {attack}\n")
    with pytest.raises(ConfigError, match=message):
        load_protocol(str(path))


def test_unknown_shipped_name():
    with pytest.raises(ConfigError, match="no shipped suite named 'nope'"):
        load_suite("nope")


def test_sweep_points_added_to_the_default_suite_leave_its_jobs_unchanged(tmp_path):
    """The default suite's sweep_of entries add jobs labelled and grouped as their entry's; without
    them, the suite plans the very jobs (labels and content keys) it planned before."""
    import yaml

    from bench.jobs import plan_training
    from bench.suite import CONFIG_PACKAGE
    from importlib import resources

    data = yaml.safe_load((resources.files(CONFIG_PACKAGE) / "suites" / "default.yaml").read_text())
    original = {**data, "defenses": [d for d in data["defenses"] if "sweep_of" not in d]}
    (tmp_path / "original.yaml").write_text(yaml.safe_dump(original))
    jobs, surrogates = plan_training(load_suite("default"))
    before, before_surrogates = plan_training(load_suite(str(tmp_path / "original.yaml")))
    keys = {job.label: job.key("fingerprint") for job in jobs}
    assert {job.label: job.key("fingerprint") for job in before} == {label: keys[label] for label in
                                                                      ("standard", "fgsm-at", "pgd-at")}
    assert surrogates["surrogate"].key("f") == before_surrogates["surrogate"].key("f")
    added = [job for job in jobs if job.label not in ("standard", "fgsm-at", "pgd-at")]
    assert [(j.label, j.entry, j.sweep) for j in added] == [("fgsm-at@eps=0.1", "fgsm-at", {"eps": 0.1}),
                                                            ("pgd-at@eps=0.1", "pgd-at", {"eps": 0.1})]


SWEEP = BASE + """  - defense: pgd-at
    hparams: {eps: 0.3, steps: 2}
"""


@pytest.mark.parametrize("entry,message", [
    ("{defense: pgd-at, sweep_of: pgd, hparams: {eps: [0.1]}}", "sweep_of 'pgd' is not a defense label"),
    ("{defense: fgsm-at, sweep_of: pgd-at, hparams: {eps: [0.1]}}", "expected the same defense and model"),
    ("{defense: pgd-at, sweep_of: pgd-at, hparams: {eps: [0.1, 0.3]}}", "value(s) ['0.3'] are that entry's"),
    ("{defense: pgd-at, sweep_of: pgd-at, hparams: {steps: 3}}", "give the 'eps' value(s) it adds"),
    ("{defense: pgd-at, sweep_of: pgd-at, label: x, hparams: {eps: 0.1}}", "remove 'label' and 'init_from'"),
])
def test_bad_sweep_extensions(tmp_path, entry, message):
    path = tmp_path / "suite.yaml"
    path.write_text(SWEEP + f"  - {entry}\n")
    with pytest.raises(ConfigError) as err:
        load_suite(str(path))
    assert message in str(err.value)


def test_a_sweep_extension_labels_its_jobs_as_its_entry(tmp_path):
    from bench.jobs import plan_training

    path = tmp_path / "suite.yaml"
    path.write_text(SWEEP + "  - {defense: pgd-at, sweep_of: pgd-at, hparams: {eps: [0.1, 0.2], steps: 1}}\n")
    jobs, _ = plan_training(load_suite(str(path)))
    swept = [(j.label, j.entry, j.sweep, j.hparams["eps"], j.hparams["steps"]) for j in jobs if j.defense == "pgd-at"]
    assert swept == [("pgd-at", "pgd-at", None, 0.3, 2), ("pgd-at@eps=0.1", "pgd-at", {"eps": 0.1}, 0.1, 1),
                     ("pgd-at@eps=0.2", "pgd-at", {"eps": 0.2}, 0.2, 1)]
