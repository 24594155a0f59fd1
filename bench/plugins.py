"""Plugins: third-party modules that register defenses, models and attacks with the built-in
decorators (``@register_defense``, ``@register_model``, ``@register_attack``).

A plugin is found three ways: a suite's ``plugins: [my_package.my_module]``, the CLI's
``--plugin my_package.my_module`` (repeatable), and the entry-point groups ``advarena.defenses``,
``advarena.models`` and ``advarena.attacks`` of installed distributions. Importing the module is
all it takes; registering a name that is already taken (a built-in's or another plugin's) is an
error naming both modules, never a silent override."""

from __future__ import annotations

import importlib
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Iterable

from bench.errors import AdvarenaError, PluginError

ENTRY_POINT_GROUPS = ("advarena.defenses", "advarena.models", "advarena.attacks")

#: Plugin modules imported so far, in order (recorded with every run's environment).
LOADED: list[str] = []
#: Folders added to the import path to find plugins (Ray workers add them too).
SEARCH_PATH: list[str] = []


def _make_builtins_importable() -> None:
    """Import the built-in registries first, so a plugin that clashes with a built-in name is the
    one that fails (and the message names it)."""
    import attacks  # noqa: F401
    import bench.datasets  # noqa: F401
    import bench.models  # noqa: F401
    import defenses  # noqa: F401


def load_plugin(module: str, search: Iterable[str | Path] = ()) -> None:
    """Import ``module`` (a dotted name), looking in ``search`` folders first; errors become one
    ``PluginError`` that names the plugin."""
    _make_builtins_importable()
    if module in LOADED:
        return
    for folder in search:
        folder = str(Path(folder).resolve())
        if folder not in sys.path:
            sys.path.insert(0, folder)
        if folder not in SEARCH_PATH:
            SEARCH_PATH.append(folder)
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name and module.startswith(err.name):
            raise PluginError(f"plugin {module!r} not found: expected an importable module name (on "
                              f"PYTHONPATH, installed, or beside the suite file)") from None
        raise PluginError(f"plugin {module!r} failed to import: {err}") from None
    except AdvarenaError as err:
        raise PluginError(f"plugin {module!r}: {err}") from None
    except Exception as err:  # a plugin's own bug: report it as the plugin's, with its type
        raise PluginError(f"plugin {module!r} raised {type(err).__name__} on import: {err}") from err
    LOADED.append(module)


def load_plugins(modules: Iterable[str], search: Iterable[str | Path] = ()) -> None:
    folders = list(search)
    for module in modules:
        load_plugin(module, folders)


def discover_entry_points() -> list[str]:
    """Import every module advertised under the advarena entry-point groups; returns their names."""
    found = []
    for group in ENTRY_POINT_GROUPS:
        for point in entry_points(group=group):
            load_plugin(point.module)
            found.append(point.module)
    return found
