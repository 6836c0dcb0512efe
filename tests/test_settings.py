"""Settings from the environment: defaults, parsing, and one-line errors naming the variable."""

from __future__ import annotations

import pytest

from convkit.errors import ConfigError
from convkit.settings import Settings, Tenant


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
