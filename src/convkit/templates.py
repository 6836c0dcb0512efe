"""Templates from a directory: ``<dir>/<name><suffix>``, the suffix choosing the engine."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from convkit.errors import ConfigError, TemplateError, TemplateNotFound, ValidationError
from convkit.names import TEMPLATE_NAME, validate_template_name
from convkit.ports import Template, TemplateEngine, TemplateSource

__all__ = ["TEMPLATE_NAME", "FileTemplateSource", "suffix_table", "validate_template_name"]

# JSON schemas for a template's data sit next to it; they are never templates themselves.
_SCHEMA_SUFFIX = ".schema.json"
_MAX_SCHEMA_BYTES = 1024 * 1024


def suffix_table(engines: Sequence[TemplateEngine]) -> dict[str, tuple[TemplateEngine, str]]:
    """Map every suffix the ``engines`` declare to ``(engine, format)``.

    :raises ConfigError: two engines claim one suffix (never a silent override).
    """
    table: dict[str, tuple[TemplateEngine, str]] = {}
    for engine in engines:
        for suffix, fmt in engine.suffixes.items():
            key = suffix.lower()
            if key in table and table[key][0] is not engine:
                raise ConfigError(
                    f"template engines {table[key][0].name!r} and {engine.name!r} "
                    f"both claim the suffix {key!r}"
                )
            table[key] = (engine, fmt)
    return table


class FileTemplateSource(TemplateSource):
    """Loads ``name`` from ``<directory>/<name><suffix>`` for the suffixes the engines declare.

    Names are validated before touching the file system, and the resolved real path must stay
    inside the real directory, so neither ``../x`` nor a symlink can read files elsewhere.
    A missing directory simply holds no templates.
    """

    def __init__(self, directory: str | Path, engines: Sequence[TemplateEngine]) -> None:
        self.directory = Path(directory)
        self._table = suffix_table(engines)

    def _real_dir(self) -> Path | None:
        try:
            real = self.directory.resolve(strict=True)
        except OSError:
            return None
        return real if real.is_dir() else None

    @staticmethod
    def _inside(path: Path, real_dir: Path) -> Path | None:
        """The real path of ``path`` if it is a regular file under ``real_dir``, else None."""
        try:
            real = path.resolve(strict=True)
        except (OSError, RuntimeError):  # dangling link, or a symlink loop
            return None
        return real if real.is_relative_to(real_dir) and real.is_file() else None

    def load(self, name: str) -> Template:
        """Load the template called ``name`` (no suffix: ``"invoice"``).

        :raises ValidationError: ``name`` is not a valid template name (code
            ``invalid_template_name``), or two files share it (code ``ambiguous_template``).
        :raises TemplateNotFound: no file, or the file resolves outside the directory.
        """
        validate_template_name(name)
        real_dir = self._real_dir()
        found: list[tuple[Path, Path, str]] = []
        if real_dir is not None:
            for suffix in self._table:
                candidate = self.directory / f"{name}{suffix}"
                if candidate.name.endswith(_SCHEMA_SUFFIX):
                    continue
                real = self._inside(candidate, real_dir)
                if real is not None:
                    found.append((candidate, real, suffix))
        if not found:
            raise TemplateNotFound(f"template {name!r} not found")
        if len(found) > 1:
            files = ", ".join(sorted(c.name for c, _, _ in found))
            raise ValidationError(
                f"template {name!r} is ambiguous: {files}", code="ambiguous_template"
            )
        candidate, real, suffix = found[0]
        engine, fmt = self._table[suffix]
        try:
            # Read the resolved path, the one that was checked to be inside the directory.
            source = real.read_bytes()
        except OSError as exc:
            raise TemplateNotFound(f"template {name!r} cannot be read: {exc.strerror}") from exc
        return Template(name, engine=engine.name, format=fmt, source=source, origin=str(candidate))

    def schema(self, name: str) -> dict[str, Any] | None:
        """The JSON Schema in ``<name>.schema.json`` beside the template, or None if there is none.

        :raises TemplateError: the file is not JSON or not a valid JSON Schema (the template's
            author must fix it; every submission names the problem).
        """
        if not TEMPLATE_NAME.match(name):
            return None
        real_dir = self._real_dir()
        if real_dir is None:
            return None
        path = self.directory / f"{name}{_SCHEMA_SUFFIX}"
        real = self._inside(path, real_dir)
        if real is None:
            return None
        try:
            raw = real.read_bytes()
            if len(raw) > _MAX_SCHEMA_BYTES:
                raise TemplateError(f"{path.name}: larger than {_MAX_SCHEMA_BYTES} bytes")
            schema = json.loads(raw)
        except (OSError, ValueError) as exc:
            raise TemplateError(f"{path.name}: not a readable JSON document: {exc}") from None
        import jsonschema

        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.exceptions.SchemaError as exc:
            raise TemplateError(f"{path.name}: not a valid JSON Schema: {exc.message}") from None
        if not isinstance(schema, dict):
            raise TemplateError(f"{path.name}: a schema must be a JSON object")
        return schema

    def names(self) -> list[str]:
        """Sorted names of the templates in the directory (hidden files and schemas skipped)."""
        real_dir = self._real_dir()
        if real_dir is None:
            return []
        names: set[str] = set()
        for entry in self.directory.iterdir():
            if entry.name.startswith(".") or entry.name.endswith(_SCHEMA_SUFFIX):
                continue
            # Longest match first, should one engine's suffix end another's (".j2.txt", ".txt").
            matches = [s for s in self._table if entry.name.endswith(s)]
            if not matches:
                continue
            suffix = max(matches, key=len)
            name = entry.name[: -len(suffix)]
            if TEMPLATE_NAME.match(name) and self._inside(entry, real_dir) is not None:
                names.add(name)
        return sorted(names)
