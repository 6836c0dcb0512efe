"""Streaming ``multipart/form-data`` for upload conversion jobs.

The upload is spooled (memory up to 1 MiB, then a temporary file) while it is parsed, chunk by
chunk, with the size limits enforced as bytes arrive: a too-large upload is refused without being
read whole or held in memory.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Callable, Iterator
from typing import IO, Any

import attrs
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from convkit.errors import InvalidRequest, PayloadTooLarge, ValidationError

__all__ = ["UploadForm", "parse_upload"]

_FIELDS = {"format", "locale", "options", "source_format"}
_SPOOL_MEMORY = 1024 * 1024


@attrs.define
class UploadForm:
    """The parsed form: the document (rewound), its file name, and the text fields."""

    file: IO[bytes]
    filename: str
    fields: dict[str, str]
    options: dict[str, Any]


class _Collector:
    """python-multipart callbacks that route each part to the spool or to a field buffer."""

    def __init__(self, spool: IO[bytes], max_file: int, max_field: int) -> None:
        self.spool = spool
        self.max_file = max_file
        self.max_field = max_field
        self.fields: dict[str, bytearray] = {}
        self.filename: str | None = None
        self.file_bytes = 0
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[str, bytes] = {}
        self._target: str | None = None  # "file", a field name, or None (refused)
        #: Set by the closing boundary; python-multipart's finalize() does not check it, so a
        #: body cut off mid-upload would otherwise pass as complete.
        self.ended = False

    # header parsing --------------------------------------------------------------------------
    def on_part_begin(self) -> None:
        self._headers = {}
        self._target = None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        name = bytes(self._header_field).decode("latin-1").lower()
        self._headers[name] = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def on_headers_finished(self) -> None:
        disposition, params = parse_options_header(self._headers.get("content-disposition", b""))
        if disposition != b"form-data" or b"name" not in params:
            raise ValidationError(
                "every part needs Content-Disposition: form-data; name=...", code="invalid_form"
            )
        name = params[b"name"].decode("utf-8", "replace")
        if name == "file":
            if self.filename is not None:
                raise ValidationError("send one 'file' part", code="invalid_form")
            self.filename = params.get(b"filename", b"").decode("utf-8", "replace")
            self._target = "file"
        elif name in _FIELDS:
            if name in self.fields:
                raise ValidationError(f"field {name!r} given twice", code="invalid_form")
            self.fields[name] = bytearray()
            self._target = name
        else:
            raise ValidationError(f"unknown field {name!r}", code="unknown_field")

    # data ------------------------------------------------------------------------------------
    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._target == "file":
            self.file_bytes += len(chunk)
            if self.file_bytes > self.max_file:
                raise PayloadTooLarge(
                    f"the document exceeds {self.max_file} bytes (MAX_UPLOAD_BYTES)"
                )
            self.spool.write(chunk)
        elif self._target is not None:
            buf = self.fields[self._target]
            buf += chunk
            if len(buf) > self.max_field:
                raise PayloadTooLarge(f"field {self._target!r} is too large")

    def on_part_end(self) -> None:
        self._target = None

    def on_end(self) -> None:
        self.ended = True

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_end": self.on_end,
        }


@contextlib.contextmanager
def parse_upload(
    content_type: str,
    read: Callable[[int], bytes],
    *,
    max_file_bytes: int,
    max_field_bytes: int,
) -> Iterator[UploadForm]:
    """Parse a multipart body from the chunk reader ``read``; the spool is removed on exit.

    Fields: ``file`` (required, the document), ``format`` (required, the target format),
    ``locale``, ``options`` (a JSON object), ``source_format`` (default: the file's suffix).
    """
    _, params = parse_options_header(content_type.encode("latin-1", "replace"))
    boundary = params.get(b"boundary")
    if not boundary or len(boundary) > 200:
        raise InvalidRequest("multipart/form-data needs a boundary", code="invalid_form")
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_MEMORY) as spool:
        collector = _Collector(spool, max_file_bytes, max_field_bytes)
        parser = MultipartParser(boundary, collector.callbacks())  # type: ignore[arg-type]
        try:
            # Stop at the closing boundary: an epilogue after it is never read.
            while not collector.ended and (chunk := read(64 * 1024)):
                parser.write(chunk)
            parser.finalize()
        except MultipartParseError as exc:
            raise InvalidRequest(f"malformed multipart body: {exc}", code="invalid_form") from None
        if not collector.ended:
            raise InvalidRequest(
                "the multipart body ends before its closing boundary", code="invalid_form"
            )
        if collector.filename is None:
            raise ValidationError("the 'file' part is missing", code="missing_field")
        fields: dict[str, str] = {}
        for name, raw in collector.fields.items():
            try:
                fields[name] = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                raise ValidationError(
                    f"field {name!r} is not UTF-8", code="invalid_field"
                ) from None
        if not fields.get("format"):
            raise ValidationError("'format' is required", code="missing_field")
        options: dict[str, Any] = {}
        if fields.get("options"):
            try:
                options = json.loads(fields["options"])
            except (ValueError, RecursionError):
                raise ValidationError(
                    "'options' must be a JSON object", code="invalid_field"
                ) from None
            if not isinstance(options, dict):
                raise ValidationError("'options' must be a JSON object", code="invalid_field")
        spool.seek(0)
        yield UploadForm(
            file=spool, filename=collector.filename or "document", fields=fields, options=options
        )
