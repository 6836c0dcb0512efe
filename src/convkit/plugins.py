"""The plugin manager factory: one manager per ConvKit instance, never a module global."""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from types import ModuleType

import pluggy

from convkit import hookspecs
from convkit.errors import ConfigError

__all__ = ["DEFAULT_PLUGINS", "ENTRY_POINT_GROUP", "get_plugin_manager"]

ENTRY_POINT_GROUP = "convkit"

#: Built-in backends, registered through the same hooks a third-party plugin uses.
DEFAULT_PLUGINS: tuple[str, ...] = (
    "convkit.backends.jobstores",
    "convkit.backends.storages",
    "convkit.backends.queues",
    "convkit.backends.engines",
    "convkit.backends.converters",
    "convkit.backends.observability",
)


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ConfigError(f"CONVKIT_PLUGINS: cannot import plugin module {name!r}: {exc}") from exc


def get_plugin_manager(
    plugins: Iterable[object | str] = (),
    *,
    load_entry_points: bool = True,
    defaults: bool = True,
) -> pluggy.PluginManager:
    """A fresh plugin manager with convkit's hookspecs, the built-ins, entry-point plugins of the
    group ``convkit`` and ``plugins`` (modules, module names or objects), checked with
    ``check_pending()`` so a misspelt hook name fails loudly."""
    pm = pluggy.PluginManager("convkit")
    pm.add_hookspecs(hookspecs)
    if defaults:
        for name in DEFAULT_PLUGINS:
            pm.register(_import(name), name=name)
    if load_entry_points:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    for plugin in plugins:
        obj = _import(plugin) if isinstance(plugin, str) else plugin
        if pm.is_registered(obj):
            continue
        pm.register(obj)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        # One line naming the plugin and the hook, not a traceback at start-up.
        raise ConfigError(f"plugin {exc.plugin!r}: {exc}") from exc
    return pm
