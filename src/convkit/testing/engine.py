"""Contract tests every :class:`convkit.ports.TemplateEngine` must pass.

Subclass :class:`TemplateEngineContract` in a test module and provide three fixtures::

    class TestMyEngine(TemplateEngineContract):
        @pytest.fixture
        def engine(self): return MyEngine()

        @pytest.fixture
        def engine_template(self):  # (template, data, text expected in the output)
            return Template("t", "my", "txt", b"Hello {{ name }}"), {"name": "Ada"}, "Hello Ada"

        @pytest.fixture
        def broken_template(self):  # a template that cannot compile
            return Template("bad", "my", "txt", b"{% if %}")

Engines producing binary formats override :meth:`TemplateEngineContract.extract_text`.
"""

from __future__ import annotations

from typing import Any

import pytest

from convkit.errors import TemplateError
from convkit.ports import RenderedDocument, Template, TemplateEngine

__all__ = ["TemplateEngineContract"]

EngineTemplate = tuple[Template, dict[str, Any], str]


class TemplateEngineContract:
    """Base class of an engine's contract tests (fixtures ``engine``, ``engine_template``,
    ``broken_template``)."""

    @pytest.fixture
    def engine(self) -> TemplateEngine:
        raise NotImplementedError("provide an `engine` fixture")

    @pytest.fixture
    def engine_template(self) -> EngineTemplate:
        raise NotImplementedError("provide an `engine_template` fixture: (template, data, text)")

    @pytest.fixture
    def broken_template(self) -> Template:
        raise NotImplementedError("provide a `broken_template` fixture that cannot compile")

    def extract_text(self, document: RenderedDocument) -> str:
        """The text of a rendered document; override for binary formats."""
        return document.content.decode("utf-8")

    def test_renders_expected_text(
        self, engine: TemplateEngine, engine_template: EngineTemplate
    ) -> None:
        template, data, expected = engine_template
        assert expected in self.extract_text(engine.render(template, data))

    def test_returns_template_format(
        self, engine: TemplateEngine, engine_template: EngineTemplate
    ) -> None:
        template, data, _ = engine_template
        doc = engine.render(template, data)
        assert isinstance(doc, RenderedDocument)
        assert isinstance(doc.content, bytes)
        assert doc.format == template.format

    def test_repeated_renders_equal(
        self, engine: TemplateEngine, engine_template: EngineTemplate
    ) -> None:
        template, data, _ = engine_template
        first = engine.render(template, data)
        assert engine.render(template, data) == first

    def test_declares_its_suffixes(self, engine: TemplateEngine) -> None:
        assert engine.name
        assert engine.suffixes
        assert all(s.startswith(".") and fmt for s, fmt in engine.suffixes.items())

    def test_check_accepts_valid_template(
        self, engine: TemplateEngine, engine_template: EngineTemplate
    ) -> None:
        engine.check(engine_template[0])

    def test_syntax_error_is_template_error(
        self, engine: TemplateEngine, broken_template: Template
    ) -> None:
        with pytest.raises(TemplateError):
            engine.render(broken_template, {})
