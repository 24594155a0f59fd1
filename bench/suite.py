"""Suite and protocol files: YAML validated by pydantic. A bad field is one error naming its path.

A *protocol* (shipped, versioned) fixes what makes results comparable: dataset, eval subset and
the exact attack list. A *suite* says what to train: defenses with hyper-parameters and seeds,
on which architecture, plus the surrogates that transfer attacks use as sources."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from attacks.base import canonical_hash
from bench.core.params import one_line
from bench.errors import AdvarenaError, ConfigError, did_you_mean
from bench.precision import Precision

CONFIG_PACKAGE = "bench.configs"
#: Protocol fields added after content keys were fixed, with their defaults: at the default they
#: are left out of the stored spec and the content hash, so existing keys stay as they were.
LATER_DEFAULTS: dict[str, Any] = {"subset": None, "precision": Precision.FP32, "compile": False,
                                  "minimum_norm_worst_case": False}


#: The same for the fields of each attack of a protocol.
ATTACK_LATER_DEFAULTS: dict[str, Any] = {"max_passes_per_image": None}


def _without_later_defaults(dumped: dict[str, Any]) -> dict[str, Any]:
    kept = {k: v for k, v in dumped.items() if k not in LATER_DEFAULTS or v != LATER_DEFAULTS[k]}
    if isinstance(kept.get("attacks"), list):
        kept["attacks"] = [{k: v for k, v in attack.items()
                            if k not in ATTACK_LATER_DEFAULTS or v != ATTACK_LATER_DEFAULTS[k]}
                           for attack in kept["attacks"]]
    return kept


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class _NumbersLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading numbers as YAML 1.2 does: ``1e-3`` and ``5E+2`` are floats
    (YAML 1.1, PyYAML's default, needs a dot in the mantissa and reads them as strings)."""


_NumbersLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?"
               r"|[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)"
               r"|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
               r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


class AttackSpec(_Strict):
    """One attack of a protocol: a stable ``id``, the registry name and every parameter."""

    id: str = Field(pattern=r"^[A-Za-z0-9_.@+-]+$", max_length=64)
    attack: str
    params: dict[str, Any] = Field(default_factory=dict)
    #: Attacks that run a trained network of the suite: a transfer attack's surrogate role, or the
    #: defense entry whose run saved a learned attacker (``pgn-generator``, ``l2l-attacker``).
    source: str | None = None
    #: Further eps values at which a bounded attack also runs (accuracy-vs-eps curves); each is
    #: stored as its own attack row ``ID@EPS`` marked as this attack's grid.
    eps_grid: list[float] = Field(default_factory=list)
    #: A fixed query budget (AttackBench): forward plus backward passes per image this attack may
    #: spend. An attack whose configuration can spend more (``Attack.pass_budget``), or that
    #: declares no bound, is refused; the evaluator checks the passes it counted after the run.
    max_passes_per_image: int | None = Field(default=None, gt=0)

    @property
    def source_kind(self) -> str | None:
        """What ``source`` must name: "surrogate", "defense" or None (a self-contained attack)."""
        from attacks import ATTACKS

        return ATTACKS.get(self.attack).metadata.get("source")

    @model_validator(mode="after")
    def _check(self) -> "AttackSpec":
        from attacks import ATTACKS

        ATTACKS.get(self.attack)
        if self.eps_grid and (self.attack == "transfer" or "eps" not in self.params):
            raise ValueError(f"eps_grid needs a white-box attack with an 'eps' parameter; {self.id!r} is "
                             f"{self.attack!r} with params {sorted(self.params)}")
        if any(e <= 0 for e in self.eps_grid) or len(set(self.eps_grid)) != len(self.eps_grid):
            raise ValueError(f"eps_grid values must be positive and distinct, got {self.eps_grid}")
        if self.source_kind is None:
            if self.source is not None:
                raise ValueError(f"'source' is only for attacks that run a trained network of the suite, "
                                 f"not {self.attack!r}")
            attack = ATTACKS.create(self.attack, **self.params)
            if self.max_passes_per_image is not None:
                bound = attack.pass_budget()
                if bound is None:
                    raise ValueError(f"attack {self.id!r} ({self.attack}) declares no bound on its passes per image, "
                                     f"so its max_passes_per_image cannot be enforced")
                if bound > self.max_passes_per_image:
                    raise ValueError(f"attack {self.id!r} may spend {bound} forward+backward passes per image, "
                                     f"above its max_passes_per_image {self.max_passes_per_image}")
            return self
        if self.max_passes_per_image is not None:
            raise ValueError(f"max_passes_per_image is for self-contained attacks, not {self.attack!r}")
        if not self.source:
            raise ValueError(f"attack {self.attack!r} needs 'source' (a {self.source_kind} of the suite)")
        ATTACKS.check_params(self.attack, self.params, reserved=("source_model", "source_id"))
        if self.attack == "transfer":
            extra = set(self.params) - {"base", "base_params"}
            if extra or "base" not in self.params:
                raise ValueError(f"transfer params are 'base' and 'base_params', got {sorted(self.params)}")
            ATTACKS.create(self.params["base"], **self.params.get("base_params", {}))
        return self

    @property
    def threat(self) -> str:
        return "black-box" if self.attack == "transfer" else "white-box"

    def grid(self) -> list["AttackSpec"]:
        """One spec per ``eps_grid`` value (ids ``ID@EPS``), without grids of their own."""
        return [self.model_copy(update={"id": f"{self.id}@{eps:g}", "params": {**self.params, "eps": eps},
                                        "eps_grid": []})
                for eps in self.eps_grid]


class EvalSubset(_Strict):
    size: int = Field(gt=0)
    seed: int = 0


class Protocol(_Strict):
    name: str
    version: int = Field(ge=1)
    description: str = ""
    dataset: str
    eval_subset: EvalSubset
    batch_size: int = Field(default=250, gt=0)
    attacks: list[AttackSpec] = Field(min_length=1)
    #: Arithmetic of the attacks and whether the model is ``torch.compile``d (``bench.precision``).
    #: At their defaults they are left out of the content hash, so protocols written before them
    #: keep their keys; any other value makes other evaluations.
    precision: Precision = Precision.FP32
    compile: bool = False
    #: Set by ``on_subset`` (``--subset N``): the evaluation ran on N images of the eval subset.
    subset: int | None = Field(default=None, gt=0)
    #: Store, per norm of the protocol's minimum-norm attacks, the per-example smallest successful
    #: perturbation over all of them (``bench.evaluate.minimum_norm_worst_case_rows``); rho, the
    #: robustness curve and the accuracy-vs-budget curve then use it. Off for protocols written
    #: before it existed (left out of the content hash at its default).
    minimum_norm_worst_case: bool = False

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        from bench.datasets import DATASETS

        DATASETS.get(value)
        return value

    @field_validator("attacks")
    @classmethod
    def _unique_ids(cls, attacks: list[AttackSpec]) -> list[AttackSpec]:
        ids = [a.id for a in attacks]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"attack ids must be unique, repeated: {duplicates}")
        return attacks

    def with_attacks(self, extra: list[AttackSpec]) -> "Protocol":
        """This protocol with a suite's own attacks appended (same name and version; the stored
        evaluation records the whole list, and ids must stay unique)."""
        if not extra:
            return self
        dumped = self.model_dump()
        return Protocol.model_validate({**dumped, "attacks": [*dumped["attacks"], *(a.model_dump() for a in extra)]})

    def expanded_attacks(self) -> list[tuple[AttackSpec, str | None]]:
        """Every attack the evaluator runs: (spec, the id whose eps grid it belongs to or None)."""
        out: list[tuple[AttackSpec, str | None]] = []
        for spec in self.attacks:
            out.append((spec, None))
            out.extend((point, spec.id) for point in spec.grid())
        return out

    def on_subset(self, n: int) -> "Protocol":
        """This protocol on ``n`` images (``--subset N``): the first ``n`` draws of its seeded
        eval subset (``np.random.RandomState(seed).choice`` draws a prefix of the same permutation,
        so the images are a subset of the full protocol's), named ``NAME@subsetN`` so that its
        results are stored, listed and compared apart from full-subset ones."""
        if self.subset is not None:
            raise ConfigError(f"protocol {self.name!r} is already restricted to a subset of {self.subset}")
        return self.model_copy(update={"name": f"{self.name}@subset{n}", "subset": n,
                                       "eval_subset": EvalSubset(size=min(n, self.eval_subset.size),
                                                                 seed=self.eval_subset.seed)})

    def spec(self) -> dict[str, Any]:
        """The protocol as stored (JSON types), without the fields added after content keys were
        fixed while they are at their defaults (``LATER_DEFAULTS``)."""
        return _without_later_defaults(self.model_dump(mode="json"))

    def content_hash(self) -> str:
        """Full-subset fp32 protocols hash as before ``subset``, ``precision`` and ``compile`` existed."""
        return canonical_hash(_without_later_defaults(self.model_dump()))

    def executed(self, precision: "Precision | None" = None, compile: bool | None = None) -> "Protocol":
        """This protocol run in ``precision`` and with ``compile`` where given (the command line's
        ``--precision``/``--compile``); the content hash follows."""
        update = {k: v for k, v in (("precision", precision), ("compile", compile)) if v is not None}
        if "precision" in update:
            update["precision"] = Precision(update["precision"])
        return self.model_copy(update=update) if update else self


class ModelSpec(_Strict):
    arch: str = "mnist-cnn"
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> "ModelSpec":
        from bench.models import MODELS
        from bench.models.base import DATA_ARGS

        MODELS.check_params(self.arch, self.params, reserved=DATA_ARGS)
        return self


class TrainSpec(_Strict):
    """A trained entry: a defense with hyper-parameters on an architecture."""

    defense: str
    label: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.@+-]+$", max_length=64)
    hparams: dict[str, Any] = Field(default_factory=dict)
    model: ModelSpec | None = None
    seeds: list[int] | None = None
    #: Fine-tune from another entry's trained model: a defense label of the suite (same seed)
    #: or a surrogate role. Required by defenses that only fine-tune (Deep Defense).
    init_from: str | None = None
    #: More points of another entry's strength sweep (seed 000 sec. 4.2: a defense is matched over
    #: its sweep): this entry trains the same defense and model with other values of the strength
    #: knob, and its jobs are labelled and grouped (matching, curves) as that entry's, e.g.
    #: ``pgd-at@eps=0.1``. The other entry's own jobs keep their labels and content keys.
    sweep_of: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.@+-]+$", max_length=64)

    @model_validator(mode="after")
    def _check(self) -> "TrainSpec":
        from defenses import DEFENSES, build_trainer

        for hparams in self.sweep_points():
            build_trainer(self.defense, hparams)
        if DEFENSES.get(self.defense).factory.fine_tunes and not self.init_from:
            raise ValueError(f"defense {self.defense!r} fine-tunes a trained model: set 'init_from' "
                             f"to the label of the entry it starts from")
        return self


    @property
    def knob(self) -> str | None:
        """The defense's strength knob (registry metadata), e.g. "eps" or "beta"."""
        from defenses import DEFENSES

        return DEFENSES.get(self.defense).metadata.get("strength")

    @property
    def entry(self) -> str:
        """The suite entry this spec's jobs belong to: its label, or the entry it adds sweep points to."""
        return self.sweep_of or self.label or self.defense

    def job_label(self, hparams: dict[str, Any]) -> str:
        """The label of this spec's job with ``hparams`` (before any seed suffix)."""
        if self.swept or self.sweep_of:
            return f"{self.entry}@{self.knob}={hparams[self.knob]:g}"
        return self.label or self.defense

    @property
    def swept(self) -> bool:
        return self.knob is not None and isinstance(self.hparams.get(self.knob), list)

    def sweep_points(self) -> list[dict[str, Any]]:
        """The hyper-parameters of each training job: one per value when the strength knob is
        given as a list (a sweep for robustness curves and accuracy matching), else one."""
        if not self.swept:
            return [self.hparams]
        values = self.hparams[self.knob]
        if not values or len(set(map(str, values))) != len(values):
            raise ValueError(f"{self.defense}: a swept {self.knob!r} needs distinct values, got {values}")
        return [{**self.hparams, self.knob: value} for value in values]


class SurrogateSpec(TrainSpec):
    defense: str = "standard"
    seed: int = 1
    seeds: None = None


class Suite(_Strict):
    name: str
    description: str = ""
    protocol: str = "quick"
    #: Arithmetic of training (``bench.precision``): fp32, or bf16 autocast (fp16 training would
    #: need loss scaling, which the trainers do not do). Part of a job's key unless fp32.
    precision: Precision = Precision.FP32
    model: ModelSpec = Field(default_factory=ModelSpec)
    #: Defaults for every trainer's common hyper-parameters (epochs, batch_size, lr ...).
    training: dict[str, Any] = Field(default_factory=dict)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    save_every_epoch: bool = False
    #: Also evaluate every saved epoch checkpoint (points for benign-accuracy matching); needs
    #: ``save_every_epoch``.
    evaluate_every_epoch: bool = False
    #: Modules imported before the rest is validated; they register defenses, models and attacks
    #: (``bench.plugins``). Looked up on the Python path and in the suite file's folder.
    plugins: list[str] = Field(default_factory=list)
    defenses: list[TrainSpec] = Field(min_length=1)
    surrogates: dict[str, SurrogateSpec] = Field(default_factory=dict)
    #: Attacks this suite adds to its protocol's, run on every defense of the suite: e.g. the
    #: learned attackers its own entries trained (``source``: the entry's label, ``label@knob=v``
    #: for a point of a sweep).
    attacks: list[AttackSpec] = Field(default_factory=list)

    @field_validator("training")
    @classmethod
    def _common_only(cls, training: dict[str, Any]) -> dict[str, Any]:
        from dataclasses import fields

        from defenses.base import CommonHParams, common_hparams

        allowed = {f.name for f in fields(CommonHParams)}
        unknown = sorted(set(training) - allowed)
        if unknown:
            raise ValueError(f"unknown training setting(s) {unknown}; accepted: {sorted(allowed)}")
        common_hparams(training)
        return training

    @field_validator("precision")
    @classmethod
    def _trainable_precision(cls, value: Precision) -> Precision:
        if value is Precision.FP16:
            raise ValueError("training in fp16 needs loss scaling, which the trainers do not do; use bf16 or fp32")
        return value

    @model_validator(mode="after")
    def _epoch_evaluation_needs_epoch_checkpoints(self) -> "Suite":
        if self.evaluate_every_epoch and not self.save_every_epoch:
            raise ValueError("evaluate_every_epoch needs save_every_epoch: true")
        return self

    @model_validator(mode="after")
    def _attack_sources(self) -> "Suite":
        _check_attack_sources(self)
        return self

    @model_validator(mode="after")
    def _unique_labels(self) -> "Suite":
        own = [d for d in self.defenses if d.sweep_of is None]
        labels = [d.label or d.defense for d in own]
        duplicates = sorted({n for n in labels if labels.count(n) > 1})
        if duplicates:
            raise ValueError(f"defense labels must be unique (set 'label'), repeated: {duplicates}")
        by_label = dict(zip(labels, own))
        _check_sweep_extensions(self, by_label)
        for label, spec in zip(labels, own):
            if spec.init_from is None:
                continue
            parent = by_label.get(spec.init_from) or self.surrogates.get(spec.init_from)
            if parent is None:
                raise ValueError(f"{label}: init_from {spec.init_from!r} is neither a defense label nor a "
                                 f"surrogate role (labels: {labels}; roles: {sorted(self.surrogates)})")
            if parent.init_from is not None:
                raise ValueError(f"{label}: init_from {spec.init_from!r}, which fine-tunes itself; chains "
                                 f"of fine-tuning are not supported")
            if (parent.model or self.model) != (spec.model or self.model):
                raise ValueError(f"{label}: init_from {spec.init_from!r} has another architecture")
        return self


def _check_sweep_extensions(suite: Suite, by_label: dict[str, TrainSpec]) -> None:
    """A ``sweep_of`` entry names an entry of the same defense and model, has a strength knob,
    does not fine-tune, and adds knob values no other job of that entry has."""
    from defenses import build_trainer

    def knob_values(spec: TrainSpec) -> list[str]:
        return [f"{build_trainer(spec.defense, h).hparams()[spec.knob]:g}" for h in spec.sweep_points()]

    values = {label: knob_values(spec) for label, spec in by_label.items() if spec.knob is not None}
    for spec in suite.defenses:
        if spec.sweep_of is None:
            continue
        parent = by_label.get(spec.sweep_of)
        if parent is None:
            raise ValueError(f"sweep_of {spec.sweep_of!r} is not a defense label of the suite (labels: "
                             f"{sorted(by_label)})")
        if spec.knob is None:
            raise ValueError(f"sweep_of {spec.sweep_of!r}: defense {spec.defense!r} has no strength knob to sweep")
        if parent.defense != spec.defense or (parent.model or suite.model) != (spec.model or suite.model):
            raise ValueError(f"sweep_of {spec.sweep_of!r}: expected the same defense and model as that entry "
                             f"({parent.defense}), got {spec.defense}")
        if spec.knob not in spec.hparams:
            raise ValueError(f"sweep_of {spec.sweep_of!r}: give the {spec.knob!r} value(s) it adds")
        if spec.init_from is not None or spec.label is not None:
            raise ValueError(f"sweep_of {spec.sweep_of!r}: its jobs take that entry's label and cannot fine-tune; "
                             f"remove 'label' and 'init_from'")
        added = knob_values(spec)
        repeated = sorted(set(added) & set(values.setdefault(spec.sweep_of, [])))
        if repeated:
            raise ValueError(f"sweep_of {spec.sweep_of!r}: {spec.knob} value(s) {repeated} are that entry's already")
        values[spec.sweep_of].extend(added)


def _check_attack_sources(suite: Suite) -> None:
    """Each suite attack's ``source`` names a surrogate role, or a defense entry whose defense
    saves the network the attack replays."""
    from attacks import ATTACKS
    from defenses import DEFENSES

    entries = {d.label or d.defense: d for d in suite.defenses if d.sweep_of is None}
    for spec in suite.attacks:
        if spec.source_kind == "surrogate":
            if spec.source not in suite.surrogates:
                raise ValueError(f"attack {spec.id!r}: surrogate {spec.source!r} is not defined "
                                 f"(roles: {sorted(suite.surrogates) or 'none'})")
        elif spec.source_kind == "defense":
            entry = entries.get(str(spec.source).split("@")[0])
            if entry is None:
                raise ValueError(f"attack {spec.id!r}: source {spec.source!r} is not a defense entry of the suite "
                                 f"(labels: {sorted(entries)})")
            needed = ATTACKS.get(spec.attack).metadata["learned_aux"]
            saved = DEFENSES.get(entry.defense).metadata.get("aux", ())
            if needed not in saved:
                raise ValueError(f"attack {spec.id!r} replays a trained {needed!r}, which defense "
                                 f"{entry.defense!r} does not train (it saves: {list(saved) or 'none'})")


def _format_validation(source: str, err: ValidationError) -> str:
    """One line: the file, then each problem as ``field.path: what was expected, got what``."""
    return f"{source}: {one_line(err)}"


def _load_yaml(path_or_name: str, kind: str) -> tuple[str, dict[str, Any]]:
    """Read a shipped config by name, or a YAML file by path."""
    path = Path(path_or_name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"{kind} file {path} does not exist")
        try:
            text, source = path.read_text(), str(path)
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"{kind} file {path} cannot be read: {err}") from None
    else:
        shipped = resources.files(CONFIG_PACKAGE) / f"{kind}s" / f"{path_or_name}.yaml"
        if not shipped.is_file():
            raise ConfigError(f"no shipped {kind} named {path_or_name!r}"
                              f"{did_you_mean(path_or_name, shipped_names(kind))} (shipped: "
                              f"{', '.join(shipped_names(kind))}); or give a path to a .yaml file")
        text, source = shipped.read_text(), f"{kind} {path_or_name!r}"
    try:
        data = yaml.load(text, Loader=_NumbersLoader)
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: malformed YAML: {_yaml_problem(err)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    return source, data


def _yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's error in one line: the problem and where it is."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).strip().splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    context = getattr(err, "context", None)
    return f"{context + ': ' if context else ''}{problem}{where}"


def shipped_names(kind: str) -> list[str]:
    folder = resources.files(CONFIG_PACKAGE) / f"{kind}s"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def _validate(model: type[BaseModel], source: str, data: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation(source, err)) from None
    except AdvarenaError as err:  # raised by a registry inside a validator
        raise ConfigError(f"{source}: {err}") from None


def load_config(name_or_path: str) -> "Suite | Protocol":
    """A suite or a protocol: a shipped name of either kind, or a YAML file told apart by its
    content (a suite lists ``defenses``)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        _, data = _load_yaml(name_or_path, "suite or protocol")
        return load_suite(name_or_path) if "defenses" in data else load_protocol(name_or_path)
    if name_or_path in shipped_names("suite"):
        return load_suite(name_or_path)
    if name_or_path in shipped_names("protocol"):
        return load_protocol(name_or_path)
    names = shipped_names("suite") + shipped_names("protocol")
    raise ConfigError(f"no shipped suite or protocol named {name_or_path!r}{did_you_mean(name_or_path, names)} "
                      f"(shipped: {', '.join(names)}); or give a path to a .yaml file")


def load_protocol(name_or_path: str) -> Protocol:
    return _validate(Protocol, *_load_yaml(name_or_path, "protocol"))


def load_suite(name_or_path: str) -> Suite:
    """Read and validate a suite; its ``plugins`` are imported first (so their names validate)."""
    from bench.plugins import load_plugins

    source, data = _load_yaml(name_or_path, "suite")
    plugins = data.get("plugins", [])
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise ConfigError(f"{source}: plugins must be a list of module names, got {plugins!r}")
    folder = Path(name_or_path).resolve().parent if Path(name_or_path).is_file() else None
    load_plugins(plugins, [folder] if folder else [])
    return _validate(Suite, source, data)
