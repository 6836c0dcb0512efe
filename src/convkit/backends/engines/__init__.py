"""Built-in template engines: Jinja (HTML, text), DOCX, ODT and XLSX.

The hook imports each engine's module only when the engine table is built (a ``ConvKit`` or a
``convkit.render`` call), never when the plugin manager is.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from convkit.hookspecs import hookimpl

if TYPE_CHECKING:
    from convkit.ports import TemplateEngine

#: ``module:class`` of each built-in engine, in registration order.
ENGINES = (
    "convkit.backends.engines.jinja:JinjaTextEngine",
    "convkit.backends.engines.docx:DocxEngine",
    "convkit.backends.engines.odt:OdtEngine",
    "convkit.backends.engines.xlsx:XlsxEngine",
)


@hookimpl
def register_template_engines() -> list[TemplateEngine]:
    """Register the built-in engines."""
    engines: list[TemplateEngine] = []
    for path in ENGINES:
        module, _, cls = path.partition(":")
        engines.append(getattr(importlib.import_module(module), cls)())
    return engines
