"""The plugin manager and the lazy backend registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from convkit import ConvKit, Settings, get_plugin_manager, hookimpl
from convkit.errors import BackendUnavailable, ConfigError, ServiceUnavailable
from convkit.ports import DoctorCheck, Queue
from convkit.registry import BackendSpec, Registry
from convkit.service import open_job_store


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


class TestPortCapabilities:
    def test_third_party_job_store_is_migrated_by_the_cli(self, tmp_path: Path) -> None:
        """`convkit migrate` asks the job store the URL names (here a plugin's), through the
        port's migrate(): the CLI knows no backend."""
        from click.testing import CliRunner

        from convkit.cli import main

        db = tmp_path / "plugin.db"
        env = {"DATABASE_URL": f"recording:///{db}", "CONVKIT_PLUGINS": "tests.plugin_example"}
        result = CliRunner().invoke(main, ["migrate"], env=env)
        assert result.exit_code == 0, result.output
        store = open_job_store(Settings(database_url=f"sqlite:///{db}"))
        try:
            assert not store.needs_migration()
        finally:
            store.close()

    def test_doctor_checks_of_a_plugin_reach_ready(self, tmp_path: Path) -> None:
        """A plugin's readiness check is part of ready(); a doctor-only check is not run there."""
        ran: list[str] = []

        def vault() -> str:
            ran.append("vault")
            raise ServiceUnavailable("vault sealed")

        def info() -> str:
            ran.append("info")
            return "v1"

        class Vault:
            @hookimpl
            def doctor_checks(self, kit: ConvKit) -> list[DoctorCheck]:
                return [DoctorCheck("vault", vault, readiness=True), DoctorCheck("info", info)]

        kit = ConvKit.from_settings(
            Settings(database_url=f"sqlite:///{tmp_path}/r.db", storage_url="memory://"),
            plugins=[Vault()],
            migrate=True,
        )
        try:
            ready = kit.ready()
            assert ready["vault"] == "vault sealed"
            assert ready["database"] == "ok"
            assert "info" not in ready and ran == ["vault"]
            names = [c.name for c in kit.doctor_checks()]
            assert names[:4] == ["database", "queue", "storage", "converter"]
            assert {"vault", "info"} <= set(names)
        finally:
            kit.close()

    def test_a_queue_consumed_elsewhere_refuses_start(self) -> None:
        """The port's default start() says the queue has its own consumer program; a Worker
        does not call it for such a queue."""

        class Elsewhere(Queue):
            name = "elsewhere"
            consumes_in_process = False

            def enqueue(self, job_id: str, *, delay_s: float = 0.0) -> None:
                pass

        with pytest.raises(ConfigError, match="its own worker program"):
            Elsewhere().start(lambda job_id: None)

    def test_a_hung_readiness_check_runs_once_and_reports_failing(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A readiness check that never answers (an S3 endpoint that accepts and hangs) keeps
        ready() waiting at most READY_CHECK_TIMEOUT_S and runs once however often ready() is
        called meanwhile; when it answers again, ready() says ok."""
        import threading

        import convkit.service

        monkeypatch.setattr(convkit.service, "READY_CHECK_TIMEOUT_S", 0.2)
        release = threading.Event()
        calls: list[int] = []

        def hung() -> str:
            calls.append(1)
            release.wait(30)
            return "ok"

        class Hung:
            @hookimpl
            def doctor_checks(self, kit: ConvKit) -> list[DoctorCheck]:
                return [DoctorCheck("hung", hung, readiness=True)]

        kit = ConvKit.from_settings(
            Settings(database_url=f"sqlite:///{tmp_path}/h.db", storage_url="memory://"),
            plugins=[Hung()],
            migrate=True,
        )
        try:
            answers = [kit.ready() for _ in range(5)]
            assert all(a["hung"] == "no answer within 0.2 s" for a in answers)
            assert all(a["database"] == "ok" for a in answers)
            assert len(calls) == 1
            release.set()
            for _ in range(100):
                if kit.ready()["hung"] == "ok":
                    break
            assert kit.ready()["hung"] == "ok"
        finally:
            release.set()
            kit.close()
