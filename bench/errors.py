"""User-facing errors: each says what was expected and what was given, and maps to one exit code."""

from __future__ import annotations

import difflib
from typing import Iterable


def did_you_mean(given: object, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` naming up to three close matches of ``given``, or ``""``."""
    close = difflib.get_close_matches(str(given), list(choices), n=3, cutoff=0.5)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


class AdvarenaError(Exception):
    """Base class of every error advarena reports to a user as one clear message."""

    exit_code = 2


class UnknownNameError(AdvarenaError, KeyError, ValueError):
    """A registry lookup for a name that is not registered (a ValueError too, so that schema
    validators report it with the path of the offending field)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class ConfigError(AdvarenaError, ValueError):
    """A suite, protocol, parameter or input that does not match its schema."""


class DataError(AdvarenaError, FileNotFoundError):
    """A dataset that cannot be found or read."""


class CheckpointError(AdvarenaError, ValueError):
    """A checkpoint whose files are missing, corrupt, or for another architecture."""


class TrainingDivergedError(AdvarenaError, FloatingPointError):
    """A training loss became NaN or infinite."""


class PluginError(AdvarenaError, ImportError):
    """A plugin module that cannot be imported, or that registers a name already taken."""
