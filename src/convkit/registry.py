"""Lazy backend registry: a name maps to a dotted path, imported only when used.

Naming a backend whose extra is not installed gives "install convkit[celery] ..." instead of an
ImportError at import time (fsspec's ``registry.py`` habit).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from convkit.errors import BackendUnavailable, ConfigError

__all__ = ["BackendSpec", "Registry"]


@attrs.frozen
class BackendSpec:
    """A backend a plugin offers, not yet imported."""

    name: str
    #: ``"package.module:attribute"`` of a factory, or the factory itself.
    factory: str | Callable[..., Any]
    #: The pip extra that provides its dependencies, for the install hint ("s3" -> convkit[s3]).
    extra: str | None = None
    description: str = ""

    def load(self) -> Callable[..., Any]:
        if callable(self.factory):
            return self.factory
        module_name, _, attr = self.factory.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            hint = f"pip install 'convkit[{self.extra}]'" if self.extra else "install its plugin"
            raise BackendUnavailable(
                f"backend {self.name!r} needs a package that is not installed ({exc.name}): {hint}"
            ) from exc
        factory: Callable[..., Any] = getattr(module, attr)
        return factory


@attrs.define
class Registry:
    """Backends of one kind (storage, job store, queue), by name."""

    kind: str
    _specs: dict[str, BackendSpec] = attrs.field(factory=dict)

    @classmethod
    def from_hook_results(cls, kind: str, results: Iterable[list[BackendSpec]]) -> Registry:
        reg = cls(kind)
        # pluggy returns later-registered plugins first; register in reverse so built-ins
        # come first and a third-party name clash is reported, not silently clobbered.
        for specs in reversed(list(results)):
            for spec in specs:
                reg.add(spec)
        return reg

    def add(self, spec: BackendSpec) -> None:
        if spec.name in self._specs:
            raise ConfigError(f"two plugins register the {self.kind} backend {spec.name!r}")
        self._specs[spec.name] = spec

    def names(self) -> list[str]:
        return sorted(self._specs)

    def get(self, name: str, *, fallback: str | None = None) -> BackendSpec:
        spec = self._specs.get(name) or (self._specs.get(fallback) if fallback else None)
        if spec is None:
            raise ConfigError(
                f"unknown {self.kind} backend {name!r}; available: {', '.join(self.names())}"
            )
        return spec
