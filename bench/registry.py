"""timm-style registries: ``@registry.register("name", **metadata)``, a validating factory and
a wildcard listing. Used for datasets, models, defenses and attacks alike."""

from __future__ import annotations

import fnmatch
import functools
import inspect
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, TypeVar

from pydantic import ConfigDict, ValidationError, create_model

from bench.core.params import one_line
from bench.errors import ConfigError, UnknownNameError, did_you_mean

T = TypeVar("T", bound=Callable[..., Any])


@dataclass(frozen=True)
class RegistryEntry(Generic[T]):
    """One registered factory with its metadata (paper, strength knob, input kind ...)."""

    name: str
    factory: T
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def summary(self) -> str:
        """First line of the factory's docstring."""
        doc = inspect.getdoc(self.factory) or ""
        return doc.splitlines()[0] if doc else ""

    def parameters(self) -> dict[str, inspect.Parameter]:
        """Keyword parameters the factory accepts (positional-only and *args excluded)."""
        params = inspect.signature(self.factory).parameters
        return {n: p for n, p in params.items()
                if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}

    def typed(self, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` converted to the factory's type hints (``"1e-3"`` to 0.001); a value that does
        not fit (``steps: two``, ``eps: .nan``) is one ``ConfigError`` naming the parameter."""
        try:
            validated = _argument_model(self.factory).model_validate(params)
        except ValidationError as err:
            raise ConfigError(f"{self.name}: {one_line(err)}") from None
        return {name: getattr(validated, name) for name in params}


_ARGUMENTS = ConfigDict(arbitrary_types_allowed=True, allow_inf_nan=False, extra="ignore")


@functools.lru_cache(maxsize=None)
def _argument_model(factory: Callable[..., Any]) -> Any:
    """A pydantic model of the factory's keyword parameters with their type hints (a hint that
    cannot be resolved, or none, accepts anything)."""
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # a hint naming something only a type checker imports
        hints = {}
    fields = {}
    for name, param in inspect.signature(factory).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        default = ... if param.default is param.empty else param.default
        fields[name] = (hints.get(name, Any), default)
    return create_model(f"{getattr(factory, '__name__', 'factory')}Arguments", __config__=_ARGUMENTS, **fields)


class Registry(Generic[T]):
    """A named collection of factories of one kind ("attack", "defense", "model", "dataset")."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, RegistryEntry[T]] = {}

    def register(self, name: str, **metadata: Any) -> Callable[[T], T]:
        """Decorator registering ``factory`` under ``name``; a second use of a name is an error."""

        def decorate(factory: T) -> T:
            if name in self._entries:
                raise ConfigError(f"{self.kind} {name!r} is already registered "
                                  f"(by {self._entries[name].factory.__module__})")
            self._entries[name] = RegistryEntry(name, factory, dict(metadata))
            return factory

        return decorate

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: str) -> RegistryEntry[T]:
        """The entry for ``name``, or an error naming close matches and the full list."""
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(f"unknown {self.kind} {name!r}{did_you_mean(name, self._entries)} "
                                   f"(registered: {', '.join(sorted(self._entries))})") from None

    def list(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell-style wildcard, sorted."""
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def check_params(self, name: str, params: dict[str, Any], reserved: tuple[str, ...] = ()) -> None:
        """Raise a clear error if ``params`` names a parameter the factory does not accept."""
        entry = self.get(name)
        accepted = {n for n in entry.parameters() if n not in reserved}
        takes_kwargs = any(p.kind is p.VAR_KEYWORD
                           for p in inspect.signature(entry.factory).parameters.values())
        unknown = sorted(set(params) - accepted)
        if unknown and not takes_kwargs:
            raise ConfigError(f"{self.kind} {name!r} got unknown parameter(s) {unknown}"
                              f"{did_you_mean(unknown[0], accepted)} (accepted: {sorted(accepted)})")

    def create(self, name: str, /, *args: Any, **params: Any) -> Any:
        """Validate ``params`` against the factory's signature, then call it."""
        self.check_params(name, params)
        entry = self.get(name)
        try:
            inspect.signature(entry.factory).bind(*args, **params)
        except TypeError as err:
            raise ConfigError(f"{self.kind} {name!r}: {err}") from None
        return entry.factory(*args, **entry.typed(params))
