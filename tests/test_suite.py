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
