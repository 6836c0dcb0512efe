"""The one rule for template names (also the shape of tenant and queue names in settings)."""

from __future__ import annotations

import re

from convkit.errors import ValidationError

__all__ = ["TEMPLATE_NAME", "validate_template_name"]

#: 1-64 letters, digits, ``_``, ``.``, ``-``, starting with a letter or digit: no path
#: separators and no leading dot, so no ``..`` and no hidden files.
TEMPLATE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def validate_template_name(name: object) -> str:
    """Return ``name`` if it is a valid template name.

    :raises ValidationError: not a string, or not matching :data:`TEMPLATE_NAME` (code
        ``invalid_template_name``, HTTP 422).
    """
    if not isinstance(name, str) or not TEMPLATE_NAME.match(name):
        raise ValidationError(
            f"invalid template name {name!r}: use 1-64 letters, digits, '_', '.', '-', "
            "starting with a letter or digit",
            code="invalid_template_name",
        )
    return name
