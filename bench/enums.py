"""Closed vocabularies (RobustBench style): threat-model norms, and the rows the evaluator derives from
other rows (pseudo-attacks). There is no device vocabulary here: ``--device`` takes auto, cpu, cuda or cuda:N
(``bench/cli.py``)."""

from __future__ import annotations

from enum import Enum


class Norm(str, Enum):
    """Threat-model norm of a perturbation."""

    LINF = "linf"
    L2 = "l2"
    L1 = "l1"

    @classmethod
    def parse(cls, value: "str | Norm") -> "Norm":
        """Accept 'linf', 'Linf', 'inf', 'l2', 'L2', '2' ...; raise a clear error otherwise."""
        if isinstance(value, Norm):
            return value
        text = str(value).strip().lower().replace("_", "")
        aliases = {"linf": cls.LINF, "inf": cls.LINF, "l-inf": cls.LINF, "l2": cls.L2, "2": cls.L2,
                   "l1": cls.L1, "1": cls.L1}
        if text not in aliases:
            from bench.errors import ConfigError

            raise ConfigError(f"unknown norm {value!r}: expected one of linf, l2, l1")
        return aliases[text]


class PseudoAttack(str, Enum):
    """Rows the evaluator derives from other attack rows instead of running an attack."""

    #: per threat model (norm, eps): an example falls if any attack of that threat model fooled it
    WORST_CASE = "worst-case"
    #: per norm: the smallest successful perturbation over the protocol's minimum-norm attacks
    MINIMUM_NORM_WORST_CASE = "minimum-norm-worst-case"
