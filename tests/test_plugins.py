"""The plugin manager and the lazy backend registry."""

from __future__ import annotations

import pytest

from convkit import Settings, get_plugin_manager, hookimpl
from convkit.errors import BackendUnavailable, ConfigError
from convkit.registry import BackendSpec, Registry


class TestPluginManager:
    def test_builtins_are_plugins(self) -> None:
        """Every built-in backend module is registered through the hooks."""
        pm = get_plugin_manager(load_entry_points=False)
        names = {pm.get_name(p) for p in pm.get_plugins()}
        assert "convkit.backends.jobstores" in names
        assert "convkit.backends.converters" in names

    def test_one_manager_per_call(self) -> None:
        """No module-global manager: two calls give two independent managers."""
        assert get_plugin_manager() is not get_plugin_manager()

    def test_misspelt_hook_fails_loudly(self) -> None:
        """check_pending() rejects a hookimpl whose name matches no hookspec."""

        class Typo:
            @hookimpl
            def register_convertors(self) -> list[object]:
                return []

        with pytest.raises(ConfigError, match="unknown hook"):
            get_plugin_manager([Typo()])

    def test_plugin_by_module_name(self) -> None:
        """CONVKIT_PLUGINS-style module names are imported and registered."""
        pm = get_plugin_manager(["tests.plugin_example"])
        results = pm.hook.register_template_engines(settings=Settings())
        assert any(e.name == "shout" for r in results for e in r)

    def test_unimportable_plugin_names_it(self) -> None:
        """A plugin module that cannot be imported is a ConfigError naming it."""
        with pytest.raises(ConfigError, match="no_such_plugin_module"):
            get_plugin_manager(["no_such_plugin_module"])


class TestRegistry:
    def test_missing_extra_gives_install_hint(self) -> None:
        """A backend whose package is absent says which extra to install."""
        spec = BackendSpec("celery", "convkit_nonexistent.celery:make", extra="celery")
        with pytest.raises(BackendUnavailable, match=r"convkit\[celery\]"):
            spec.load()

    def test_duplicate_names_are_refused(self) -> None:
        """Two plugins registering one backend name is an error, not a silent override."""
        with pytest.raises(ConfigError, match="two plugins"):
            Registry.from_hook_results(
                "queue", [[BackendSpec("x", dict)], [BackendSpec("x", dict)]]
            )

    def test_unknown_name_lists_available(self) -> None:
        """An unknown backend name lists what is available."""
        reg = Registry.from_hook_results("queue", [[BackendSpec("inline", dict)]])
        with pytest.raises(ConfigError, match="available: inline"):
            reg.get("redis")
