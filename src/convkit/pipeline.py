"""The two steps every path shares: render a template, convert a document.

The service's workers (:mod:`convkit.runner`), the embedded renderer (:mod:`convkit.embed`) and
submission checks all go through these tables and helpers, so "which engine", "which converter,
or ``unsupported_format``" and "convert in a private temporary folder" are written once.
"""

from __future__ import annotations

import contextlib
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import attrs
import pluggy

from convkit.errors import ConfigError, ValidationError
from convkit.ports import Converter, RenderedDocument, Template, TemplateEngine
from convkit.settings import Settings
from convkit.tempdirs import owned_tempdir
from convkit.templating.scope import ImageLoader, image_loader_scope

__all__ = ["ConverterTable", "EngineTable", "converted", "validate_locale"]

_LOCALE = re.compile(r"^[A-Za-z]{2,3}([_-][A-Za-z0-9]{2,8})*$")


def validate_locale(locale: object) -> str | None:
    """Return a normalized locale (``en_US``) or None.

    :raises ValidationError: ``invalid_locale`` (422) for a malformed tag or one Babel does not
        know as given (Babel fills in "likely" subtags, ``und`` -> ``en_US``: a locale it had to
        change is not the one the client asked for; CLDR's likely-subtags rule).
    """
    if locale is None:
        return None
    if not isinstance(locale, str) or not _LOCALE.match(locale):
        raise ValidationError(f"invalid locale {locale!r}", code="invalid_locale")
    import babel

    try:
        parsed = babel.Locale.parse(locale.replace("-", "_"))
    except (ValueError, babel.UnknownLocaleError):
        raise ValidationError(f"unknown locale {locale!r}", code="invalid_locale") from None
    parts = re.split(r"[_-]", locale)
    wanted_script = next((p for p in parts[1:] if len(p) == 4 and p.isalpha()), None)
    wanted_territory = next(
        (p for p in parts[1:] if (len(p) == 2 and p.isalpha()) or (len(p) == 3 and p.isdigit())),
        None,
    )
    if (
        parts[0].lower() != parsed.language
        or (wanted_script and wanted_script.title() != parsed.script)
        or (wanted_territory and wanted_territory.upper() != parsed.territory)
        or len(parts) > 1 + bool(wanted_script) + bool(wanted_territory)
    ):
        raise ValidationError(f"unknown locale {locale!r}", code="invalid_locale")
    return str(parsed)


@attrs.define
class EngineTable:
    """Template engines by name and by suffix, built from ``register_template_engines``."""

    by_name: dict[str, TemplateEngine]

    @classmethod
    def from_plugins(cls, pm: pluggy.PluginManager, settings: Settings) -> EngineTable:
        """Every registered engine; two engines with one name or one suffix is a ConfigError."""
        by_name: dict[str, TemplateEngine] = {}
        seen_suffix: dict[str, str] = {}
        for engines in reversed(pm.hook.register_template_engines(settings=settings)):
            for engine in engines:
                if engine.name in by_name:
                    raise ConfigError(f"two plugins register the template engine {engine.name!r}")
                for suffix in engine.suffixes:
                    if suffix in seen_suffix:
                        raise ConfigError(
                            f"template engines {seen_suffix[suffix]!r} and {engine.name!r} "
                            f"both claim {suffix!r}"
                        )
                    seen_suffix[suffix] = engine.name
                by_name[engine.name] = engine
        return cls(by_name)

    def engines(self) -> list[TemplateEngine]:
        return list(self.by_name.values())

    def for_suffix(self, suffix: str) -> tuple[TemplateEngine, str]:
        """The engine for a file suffix and the format it renders; 422 ``unsupported_template``."""
        for engine in self.by_name.values():
            if suffix.lower() in engine.suffixes:
                return engine, engine.suffixes[suffix.lower()]
        known = sorted(s for e in self.by_name.values() for s in e.suffixes)
        raise ValidationError(
            f"no template engine handles {suffix!r} files (known: {', '.join(known)})",
            code="unsupported_template",
        )

    def for_template(self, template: Template) -> TemplateEngine:
        """The engine ``template`` names; 422 ``unsupported_template`` if no plugin has it."""
        try:
            return self.by_name[template.engine]
        except KeyError:
            raise ValidationError(
                f"template {template.name!r} needs the engine {template.engine!r}, "
                "which no plugin provides",
                code="unsupported_template",
            ) from None

    def render(
        self,
        template: Template,
        data: dict[str, Any],
        *,
        locale: str | None,
        options: dict[str, Any] | None,
        image_loader: ImageLoader | None = None,
    ) -> RenderedDocument:
        """Render ``template`` with its engine; ``image_loader`` serves ``storage_key`` images
        for this render only (None: storage keys are refused)."""
        engine = self.for_template(template)
        with image_loader_scope(image_loader):
            return engine.render(template, data, locale=locale, options=options or {})


@attrs.define
class ConverterTable:
    """Converters in lookup order: for a (source, target) pair the first whose ``targets``
    holds the target wins. pluggy answers later-registered plugins first, so a third-party
    converter takes a pair over from the built-ins."""

    converters: list[Converter]

    @classmethod
    def from_plugins(cls, pm: pluggy.PluginManager, settings: Settings) -> ConverterTable:
        results = pm.hook.register_converters(settings=settings, hook=pm.hook)
        return cls([c for result in results for c in result])

    def __iter__(self) -> Iterator[Converter]:
        return iter(self.converters)

    def find(self, source: str, target: str) -> Converter | None:
        for converter in self.converters:
            if target in converter.targets(source):
                return converter
        return None

    def require(self, source: str, target: str, *, hint: str = "") -> Converter:
        """The converter for the pair, or ValidationError ``unsupported_format`` (422)."""
        converter = self.find(source, target)
        if converter is None:
            raise ValidationError(
                hint or f"cannot convert {source} to {target}", code="unsupported_format"
            )
        return converter

    def targets(self, source: str) -> set[str]:
        """Every format some converter produces from ``source``."""
        out: set[str] = set()
        for converter in self.converters:
            out |= converter.targets(source)
        return out

    def shutdown(self) -> None:
        for converter in self.converters:
            converter.shutdown()

    def close(self) -> None:
        for converter in self.converters:
            converter.close()


@contextlib.contextmanager
def converted(
    converter: Converter,
    source: bytes | Path | IO[bytes],
    *,
    source_format: str,
    target_format: str,
    options: dict[str, Any] | None = None,
    locale: str | None = None,
) -> Iterator[Path]:
    """Convert ``source`` (bytes, a file, or a binary stream copied in 1 MiB chunks) in a private
    temporary folder and yield the output file's path; the folder is removed on exit.

    :raises ConversionError: and the converter's other errors, unchanged.
    """
    with owned_tempdir("convkit-job-") as tmp:
        if isinstance(source, Path):
            src = source
        else:
            src = Path(tmp) / f"input.{source_format}"
            if isinstance(source, bytes):
                src.write_bytes(source)
            else:
                with open(src, "wb") as out:
                    shutil.copyfileobj(source, out, 1024 * 1024)
        dst = Path(tmp) / f"output.{target_format}"
        converter.convert(
            src,
            dst,
            source_format=source_format,
            target_format=target_format,
            options=options or {},
            locale=locale,
        )
        yield dst
