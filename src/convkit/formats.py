"""File formats convkit knows by name: media types and how to spell them."""

from __future__ import annotations

import re

from convkit.errors import ValidationError

__all__ = ["MEDIA_TYPES", "media_type", "normalize_format"]

MEDIA_TYPES: dict[str, str] = {
    "pdf": "application/pdf",
    "html": "text/html; charset=utf-8",
    "txt": "text/plain; charset=utf-8",
    "csv": "text/csv; charset=utf-8",
    "rtf": "application/rtf",
    "png": "image/png",
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "doc": "application/msword",
    "xls": "application/vnd.ms-excel",
    "ppt": "application/vnd.ms-powerpoint",
    "odt": "application/vnd.oasis.opendocument.text",
    "ods": "application/vnd.oasis.opendocument.spreadsheet",
    "odp": "application/vnd.oasis.opendocument.presentation",
    "fodt": "application/vnd.oasis.opendocument.text-flat-xml",
}

_FORMAT = re.compile(r"^[a-z0-9]{1,10}$")


def normalize_format(value: object) -> str:
    """``"PDF"``, ``".pdf"`` -> ``"pdf"``; anything else that is not a short name -> 422."""
    if not isinstance(value, str):
        raise ValidationError('format must be a string such as "pdf"', code="invalid_format")
    fmt = value.strip().lower().lstrip(".")
    if not _FORMAT.match(fmt):
        raise ValidationError(f"invalid format {value!r}", code="invalid_format")
    return fmt


def media_type(fmt: str) -> str:
    return MEDIA_TYPES.get(fmt, "application/octet-stream")
