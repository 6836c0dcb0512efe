"""Settings from the environment: defaults, parsing, and one-line errors naming the variable."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest

import convkit
from convkit import hookimpl
from convkit.errors import ConfigError
from convkit.plugins import get_plugin_manager
from convkit.service import ConvKit
from convkit.settings import CORE_SETTINGS, Setting, Settings, Tenant

PLUGIN = "tests.settings_plugin"


class TestSettings:
    def test_defaults_are_embedded(self) -> None:
        """With no environment, convkit uses SQLite, a local folder and in-process workers."""
        s = Settings.from_env({})
        assert s.database_url.startswith("sqlite:///")
        assert (s.storage_url, s.queue, s.api_keys) == ("storage", "inline", {})

    def test_api_key_and_api_keys(self) -> None:
        """API_KEY is the default tenant; API_KEYS adds tenants with optional template lists."""
        s = Settings.from_env({"API_KEY": "k0", "API_KEYS": "k1=acme:invoice|letter, k2=globex"})
        assert s.tenant_for("k0") == Tenant("default")
        assert s.tenant_for("k1") == Tenant("acme", frozenset({"invoice", "letter"}))
        assert s.tenant_for("k2") == Tenant("globex")
        assert s.tenant_for("nope") is None

    def test_allowed_templates_combine(self) -> None:
        """A template must pass both ALLOWED_TEMPLATES and the tenant's own list."""
        s = Settings.from_env({"ALLOWED_TEMPLATES": "invoice, letter"})
        t = Tenant("acme", frozenset({"invoice", "memo"}))
        assert s.allowed_templates == frozenset({"invoice", "letter"})
        assert t.may_use("invoice", s.allowed_templates)
        assert not t.may_use("letter", s.allowed_templates)
        assert not t.may_use("memo", s.allowed_templates)

    @pytest.mark.parametrize(
        ("env", "variable"),
        [
            ({"FILE_TTL_HOURS": "soon"}, "FILE_TTL_HOURS"),
            ({"FILE_TTL_HOURS": "-1"}, "FILE_TTL_HOURS"),
            ({"MAX_REQUEST_BYTES": "1.5"}, "MAX_REQUEST_BYTES"),
            ({"WORKER_THREADS": "-2"}, "WORKER_THREADS"),
            ({"CELERY_TASK_ALWAYS_EAGER": "maybe"}, "CELERY_TASK_ALWAYS_EAGER"),
            ({"REDIS_URL": "localhost:6379"}, "REDIS_URL"),
            ({"DATABASE_URL": "convkit.db"}, "DATABASE_URL"),
            ({"API_KEYS": "just-a-key"}, "API_KEYS"),
            ({"API_KEYS": "k=bad/tenant"}, "API_KEYS"),
            ({"ALLOWED_TEMPLATES": "../etc"}, "ALLOWED_TEMPLATES"),
            ({"CONVKIT_QUEUE": "no such"}, "CONVKIT_QUEUE"),
            ({"JOB_LEASE_SECONDS": "0"}, "JOB_LEASE_SECONDS"),
            ({"STORAGE_URL": " "}, "STORAGE_URL"),
        ],
    )
    def test_bad_value_names_the_variable(self, env: dict[str, str], variable: str) -> None:
        """A bad value stops start-up with one line that names the variable."""
        with pytest.raises(ConfigError) as err:
            Settings.from_env(env)
        assert variable in err.value.message
        assert "\n" not in err.value.message

    def test_api_keys_error_does_not_echo_the_key(self) -> None:
        """The error for a malformed API_KEYS entry never prints the secret."""
        with pytest.raises(ConfigError) as err:
            Settings.from_env({"API_KEYS": "supersecretvalue"})
        assert "supersecretvalue" not in err.value.message

    def test_numbers_and_flags(self) -> None:
        """Numeric and boolean variables are parsed."""
        s = Settings.from_env(
            {
                "FILE_TTL_HOURS": "0.5",
                "CELERY_TASK_ALWAYS_EAGER": "true",
                "WORKER_THREADS": "0",
                "CONVKIT_PLUGINS": "a.b, c",
            }
        )
        assert (s.file_ttl_hours, s.celery_task_always_eager, s.worker_threads) == (0.5, True, 0)
        assert s.plugins == ("a.b", "c")

    def test_settings_built_in_code_match_the_declared_defaults(self) -> None:
        """Settings() and Settings.from_env({}) agree, and every core field is declared once."""
        assert Settings() == Settings.from_env({})
        fields = [s.field for s in CORE_SETTINGS if s.field is not None]
        assert len(fields) == len(set(fields))
        assert set(fields) <= {f.name for f in attrs.fields(Settings)}
        assert Settings().get("OFFICE_TIMEOUT_SECONDS") == 60.0

    def test_only_declared_variables_are_read(self) -> None:
        """from_env looks up no variable that is not declared (so none escapes the docs)."""

        class Recording(dict[str, str]):
            def __init__(self) -> None:
                super().__init__()
                self.asked: set[str] = set()

            def __contains__(self, key: object) -> bool:
                self.asked.add(str(key))
                return super().__contains__(key)

        env = Recording()
        Settings.from_env(env)
        declared = {name for s in CORE_SETTINGS for name in s.names()}
        assert env.asked == declared

    def test_empty_values(self) -> None:
        """Empty means false for a flag, unset without a default, and is refused otherwise."""
        s = Settings.from_env({"CELERY_TASK_ALWAYS_EAGER": "", "REDIS_URL": " ", "API_KEY": ""})
        assert (s.celery_task_always_eager, s.redis_url, s.api_keys) == (False, None, {})
        with pytest.raises(ConfigError, match=r"^WORKER_THREADS must not be empty$"):
            Settings.from_env({"WORKER_THREADS": ""})

    def test_url_errors_do_not_echo_the_value(self) -> None:
        """A URL may carry a password: its error names the variable, not the value."""
        with pytest.raises(ConfigError) as err:
            Settings.from_env({"REDIS_URL": "http://user:hunter2@host"})
        assert err.value.message == "REDIS_URL must be a URL starting with redis:// or rediss://"

    def test_postgres_scheme_is_accepted(self) -> None:
        """postgres:// is an alias of postgresql:// (the job store maps it), as the docs say."""
        url = "postgres://u:p@db/convkit"
        assert Settings.from_env({"DATABASE_URL": url}).database_url == url


class TestDeprecatedNames:
    def test_old_name_is_read_with_a_warning(self, caplog: pytest.LogCaptureFixture) -> None:
        """OFFICE_TIMEOUT_S still sets the timeout, with a DeprecationWarning and a log line."""
        with (
            caplog.at_level(logging.WARNING, "convkit.settings"),
            pytest.warns(DeprecationWarning, match="rename it to OFFICE_TIMEOUT_SECONDS"),
        ):
            s = Settings.from_env({"OFFICE_TIMEOUT_S": "7.5"})
        assert s.office_timeout_seconds == 7.5
        assert "OFFICE_TIMEOUT_S is deprecated" in caplog.text

    def test_new_name_wins(self) -> None:
        """With both names set the new one is used and the old one ignored, with a warning."""
        env = {"OFFICE_TIMEOUT_S": "7.5", "OFFICE_TIMEOUT_SECONDS": "90"}
        with pytest.warns(DeprecationWarning, match="ignored: OFFICE_TIMEOUT_SECONDS is set"):
            assert Settings.from_env(env).office_timeout_seconds == 90

    def test_error_names_the_variable_that_was_set(self) -> None:
        """A bad value under the old name is reported under the old name."""
        with (
            pytest.warns(DeprecationWarning, match="OFFICE_TIMEOUT_S is deprecated"),
            pytest.raises(ConfigError) as err,
        ):
            Settings.from_env({"OFFICE_TIMEOUT_S": "soon"})
        assert err.value.message == (
            "OFFICE_TIMEOUT_S must be a number of seconds >= 1, not 'soon'"
        )


class TestDeclarations:
    @pytest.mark.parametrize(
        ("kwargs", "problem"),
        [
            ({"env": "lower_case"}, "UPPER_SNAKE_CASE"),
            ({"type": "decimal"}, "unknown type"),
            ({"type": "seconds", "env": "WAIT_S"}, "ends in _SECONDS"),
            ({"type": "str", "minimum": 1}, "minimum applies"),
            ({"doc": "two\nlines"}, "one line"),
            ({"type": int}, "accepts"),
        ],
    )
    def test_malformed_declaration_is_refused(
        self, kwargs: dict[str, object], problem: str
    ) -> None:
        """A declaration breaking the conventions fails where it is written."""
        base: dict[str, object] = {"env": "X_SECONDS", "type": "int", "default": 1, "doc": "X."}
        with pytest.raises(ValueError, match=problem):
            Setting(**{**base, **kwargs})  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        ("setting", "raw", "value"),
        [
            (Setting("A_FLAG", "bool", False, "d"), "Yes", True),
            (Setting("A_LIST", "list", (), "d"), "a, b,,c", ("a", "b", "c")),
            (Setting("A_JSON", "json", None, "d"), '{"k": [1]}', {"k": [1]}),
            (Setting("A_URL", "url", None, "d"), "https://x.org", "https://x.org"),
            (Setting("A_NUMBER", "float", 1.0, "d", minimum=0.5), "0.5", 0.5),
        ],
    )
    def test_types_parse(self, setting: Setting, raw: str, value: object) -> None:
        """Each built-in type parses its syntax."""
        assert setting.parse(raw) == value

    def test_json_error_is_one_line(self) -> None:
        """A malformed JSON value is refused with one line naming the variable."""
        with pytest.raises(ConfigError, match=r"^A_JSON must be a JSON value") as err:
            Setting("A_JSON", "json", None, "d").parse("{nope")
        assert "\n" not in err.value.message


@pytest.fixture
def repeat_template(tmp_path: Path) -> Path:
    path = tmp_path / "echo.repeat"
    path.write_text("ab")
    return path


class _Twin:
    """A second plugin declaring REPEAT_TIMES again."""

    @hookimpl
    def register_settings(self) -> list[Setting]:
        return [Setting("REPEAT_TIMES", "int", 1, "Mine too.")]


def test_hook_register_settings(repeat_template: Path, kit_factory: Callable[..., ConvKit]) -> None:
    """A plugin's settings are parsed from the environment, validated with one line naming the
    variable, reach its hooks through ConvKit.from_settings and convkit.render, and one name
    declared twice stops start-up."""
    pm = get_plugin_manager([PLUGIN], load_entry_points=False)
    settings = Settings.from_env({"REPEAT_TIMES": "3"}).with_plugin_settings(pm)
    assert settings.get("REPEAT_TIMES") == 3
    assert settings.get("REPEAT_TOKEN") is None
    assert Settings().with_plugin_settings(pm).get("REPEAT_TIMES") == 2  # the default
    for raw, message in [
        ("many", "REPEAT_TIMES must be a whole number >= 1, not 'many'"),
        ("0", "REPEAT_TIMES must be >= 1, not '0'"),
        ("11", "REPEAT_TIMES must be at most 10, not 11"),  # the plugin's validator
    ]:
        with pytest.raises(ConfigError) as err:
            Settings.from_env({"REPEAT_TIMES": raw}).with_plugin_settings(pm)
        assert err.value.message == message

    kit = kit_factory(plugins=(PLUGIN,), source={"REPEAT_TIMES": "4"})
    assert kit.settings.get("REPEAT_TIMES") == 4
    assert kit.engines.by_name["repeat"].times == 4  # type: ignore[attr-defined]
    rendered = convkit.render(
        repeat_template, {}, settings=Settings.from_env({"REPEAT_TIMES": "3"}), plugins=[PLUGIN]
    )
    assert rendered == b"ababab"

    with pytest.raises(ConfigError, match="REPEAT_TIMES is declared twice"):
        Settings().with_plugin_settings(get_plugin_manager([PLUGIN, _Twin()]))


def test_plugin_may_not_redeclare_a_core_setting() -> None:
    """A plugin declaring a variable convkit owns (or a deprecated name of one) is refused."""

    class Thief:
        @hookimpl
        def register_settings(self) -> list[Setting]:
            return [Setting("OFFICE_TIMEOUT_S", "str", None, "Mine.")]

    with pytest.raises(ConfigError, match="OFFICE_TIMEOUT_S is declared twice, by 'convkit'"):
        Settings().with_plugin_settings(get_plugin_manager([Thief()]))


def test_undeclared_name_is_a_key_error() -> None:
    """Asking for a setting nobody declared is a bug, not a silent None."""
    with pytest.raises(KeyError, match="NOPE"):
        Settings().get("NOPE")


def test_register_settings_must_return_settings() -> None:
    """A plugin returning anything but a list of Setting is named in a one-line error."""

    class Sloppy:
        @hookimpl
        def register_settings(self) -> list[object]:
            return ["REPEAT_TIMES"]

    with pytest.raises(ConfigError, match="register_settings must return a list of"):
        Settings().with_plugin_settings(get_plugin_manager([Sloppy()]))
