"""Rich content from plain JSON, the same for every office engine (DOCX, ODT, XLSX).

JSON has no images or formatted text, so a data value that is an object with exactly one key
``$image``, ``$rich`` or ``$link`` is rich content. Any other value is plain text. Three shapes::

    {"$image": {"data": "<base64 PNG/JPEG/GIF/BMP>",   # or "storage_key": "<tenant>/<key>"
                "width_mm": 40,                          # optional; see sizing below
                "height_mm": 20,                         # optional
                "alt": "Company logo"}}                  # optional description

    {"$rich": [{"text": "Total: ", "bold": true},
               {"text": "due now", "italic": true, "underline": true, "strike": false,
                "color": "#C00000", "size_pt": 14, "font": "Arial",
                "link": "https://example.com/pay"}]}   # every key but "text" is optional

    {"$link": {"url": "https://example.com", "text": "example.com"}}   # text defaults to url

Rules (every engine applies them the same way):

* Image ``data`` is standard base64 of a PNG, JPEG, GIF or BMP file (the format is read from the
  bytes, never trusted from a name), at most :data:`MAX_IMAGE_BYTES` decoded. Sizing: both
  ``width_mm`` and ``height_mm`` -> that box; one of them -> the other follows the image's aspect
  ratio; neither -> the image's pixel size at 96 dpi. Sizes are in (0, 1000] mm.
* ``storage_key`` instead of ``data`` reads the image through the engine's image loader (a
  callable the service gives the engine, scoped to the job's tenant); an engine without one
  refuses storage keys.
* Links: ``http``, ``https``, ``mailto`` and ``tel`` URLs, or ``#bookmark`` for a link inside the
  document. Anything else (``javascript:``, ``file:``) is refused.
* Colours are ``#RRGGBB`` (normalised to upper case, no ``#``); ``size_pt`` is in [1, 1000].
* Text keeps the plain-text conventions of the engine (``\\n`` line break, ``\\t`` tab, ...).
* Malformed rich content is the data's fault and raises :class:`~convkit.errors.TemplateError`
  with code ``invalid_rich_content`` (HTTP 422 like ``template_error``), whose message starts
  with ``invalid rich content:`` and names what is wrong.

API for engines::

    from convkit.templating.rich import (
        Image, Link, RichText, TextRun, RichValue, parse_rich, plain_text, is_rich_candidate)

    rich = parse_rich(value, image_loader=None)  # -> Image | RichText | Link | None (plain value)
    rich.runs / rich.url / rich.data ...         # typed, validated, frozen attrs classes
    image.size_mm()                              # -> (width_mm, height_mm), sizing rules applied
    plain_text(rich)                             # -> text fallback where markup cannot go
    mm_to_emu(mm), mm_to_twips(mm)               # unit helpers
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from collections.abc import Mapping
from typing import Any

import attrs

from convkit.errors import TemplateError
from convkit.templating.scope import (
    MAX_IMAGE_BYTES,
    ImageLoader,
    current_image_loader,
)

__all__ = [
    "IMAGE_MEDIA_TYPES",
    "LINK_SCHEMES",
    "MAX_IMAGE_BYTES",
    "MAX_RUNS",
    "Image",
    "ImageLoader",
    "Link",
    "RichText",
    "RichValue",
    "TextRun",
    "is_rich_candidate",
    "mm_to_emu",
    "mm_to_twips",
    "parse_rich",
    "plain_text",
    "sniff_image",
    "validate_link",
]

#: Most runs in one ``$rich`` value.
MAX_RUNS = 10_000
#: Largest width or height, in millimetres.
MAX_MM = 1000.0
#: Link schemes accepted (plus ``#bookmark``).
LINK_SCHEMES = ("http://", "https://", "mailto:", "tel:")
#: Image format -> media type.
IMAGE_MEDIA_TYPES = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "gif": "image/gif",
    "bmp": "image/bmp",
}
_KEYS = ("$image", "$rich", "$link")
_COLOR = re.compile(r"^#?([0-9A-Fa-f]{6})$")
_RUN_KEYS = frozenset(
    {"text", "bold", "italic", "underline", "strike", "color", "size_pt", "font", "link"}
)
_FONT = re.compile(r"^[^\x00-\x1f<>&\"]{1,64}$")

#: Reads an image by storage key (the service scopes it to the job's tenant).


def _fail(message: str) -> TemplateError:
    return TemplateError(f"invalid rich content: {message}", code="invalid_rich_content")


@attrs.frozen
class Image:
    """An image to embed: validated bytes, their format and the requested size."""

    data: bytes = attrs.field(repr=False)
    #: "png", "jpeg", "gif" or "bmp" (sniffed from the bytes).
    format: str
    pixel_width: int
    pixel_height: int
    width_mm: float | None = None
    height_mm: float | None = None
    alt: str = ""
    #: sha256 of ``data``: engines store one copy per document however often it is used.
    digest: str = attrs.field()

    @digest.default
    def _digest(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def media_type(self) -> str:
        return IMAGE_MEDIA_TYPES[self.format]

    def size_mm(self) -> tuple[float, float]:
        """(width, height) in mm: as given, one side from the aspect ratio, or 96 dpi."""
        ratio = self.pixel_height / self.pixel_width
        if self.width_mm is not None and self.height_mm is not None:
            return self.width_mm, self.height_mm
        if self.width_mm is not None:
            return self.width_mm, self.width_mm * ratio
        if self.height_mm is not None:
            return self.height_mm / ratio, self.height_mm
        return self.pixel_width * 25.4 / 96, self.pixel_height * 25.4 / 96


@attrs.frozen
class TextRun:
    """A piece of text with optional formatting; ``None`` means "as the template's run"."""

    text: str
    bold: bool | None = None
    italic: bool | None = None
    underline: bool | None = None
    strike: bool | None = None
    #: "RRGGBB", upper case, no "#".
    color: str | None = None
    size_pt: float | None = None
    font: str | None = None
    #: A validated link target (see :data:`LINK_SCHEMES`).
    link: str | None = None


@attrs.frozen
class RichText:
    runs: tuple[TextRun, ...]


@attrs.frozen
class Link:
    url: str
    text: str


RichValue = Image | RichText | Link


def is_rich_candidate(value: object) -> bool:
    """True if ``value`` has the outer shape of rich content (a one-key ``$...`` dict).
    Cheap; engines call it on every value before :func:`parse_rich`."""
    return type(value) is dict and len(value) == 1 and next(iter(value)) in _KEYS


def parse_rich(value: object, *, image_loader: ImageLoader | None = None) -> RichValue | None:
    """Turn a JSON value into rich content, or None if it is a plain value.

    :raises TemplateError: (code ``invalid_rich_content``) the value claims to be rich content
        (``{"$image": ...}``, ...) but is malformed.
    """
    if not isinstance(value, Mapping) or len(value) != 1:
        return None
    key, body = next(iter(value.items()))
    if key == "$image":
        return _parse_image(body, image_loader or current_image_loader())
    if key == "$rich":
        return _parse_rich_text(body)
    if key == "$link":
        return _parse_link(body)
    return None


def plain_text(value: RichValue) -> str:
    """The text of rich content, for places that take no markup (properties, attributes)."""
    if isinstance(value, RichText):
        return "".join(run.text for run in value.runs)
    if isinstance(value, Link):
        return value.text
    return value.alt


def mm_to_emu(mm: float) -> int:
    """Millimetres to English Metric Units (DrawingML)."""
    return round(mm * 36000)


def mm_to_twips(mm: float) -> int:
    """Millimetres to twentieths of a point (WordprocessingML lengths)."""
    return round(mm * 1440 / 25.4)


# --------------------------------------------------------------------------------------------------


def _obj(body: object, what: str) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise _fail(f"{what} must be an object, got {type(body).__name__}")
    return body


def _text(body: Mapping[str, Any], key: str, what: str, *, default: str | None = None) -> str:
    value = body.get(key, default)
    if not isinstance(value, str):
        raise _fail(f"{what}: {key!r} must be a string")
    return value


def _bool(body: Mapping[str, Any], key: str, what: str) -> bool | None:
    value = body.get(key)
    if value is not None and not isinstance(value, bool):
        raise _fail(f"{what}: {key!r} must be true, false or null")
    return value


def _number(body: Mapping[str, Any], key: str, what: str, low: float, high: float) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(f"{what}: {key!r} must be a number")
    number = float(value)
    if not low < number <= high and not (number == low and low > 0):
        raise _fail(f"{what}: {key!r} must be in ({low:g}, {high:g}], got {value!r}")
    return number


def _unknown(body: Mapping[str, Any], allowed: frozenset[str], what: str) -> None:
    extra = sorted(set(body) - allowed)
    if extra:
        raise _fail(f"{what}: unknown key(s) {', '.join(map(repr, extra))}")


def validate_link(url: object, what: str = "$link") -> str:
    """Return ``url`` if it is an accepted link target, else raise TemplateError."""
    if not isinstance(url, str) or not url or len(url) > 2048:
        raise _fail(f"{what}: a link must be a non-empty string of at most 2048 characters")
    if any(ord(c) < 0x20 or c in ' <>"\\' for c in url):
        raise _fail(f"{what}: link {url[:80]!r} contains spaces or characters a URL cannot hold")
    lowered = url.lower()
    if url.startswith("#"):
        if not re.fullmatch(r"#[A-Za-z_][A-Za-z0-9_.-]{0,39}", url):
            raise _fail(f"{what}: {url!r} is not a bookmark name")
        return url
    if not lowered.startswith(LINK_SCHEMES):
        raise _fail(
            f"{what}: link {url[:80]!r} must start with http://, https://, mailto:, tel: or #"
        )
    return url


def _parse_link(body: object) -> Link:
    obj = _obj(body, "$link")
    _unknown(obj, frozenset({"url", "text"}), "$link")
    url = validate_link(obj.get("url"))
    text = _text(obj, "text", "$link", default=url)
    return Link(url=url, text=text)


def _parse_rich_text(body: object) -> RichText:
    if not isinstance(body, list):
        raise _fail(f"$rich must be a list of runs, got {type(body).__name__}")
    if len(body) > MAX_RUNS:
        raise _fail(f"$rich has {len(body)} runs (limit {MAX_RUNS})")
    runs = []
    for n, item in enumerate(body):
        what = f"$rich[{n}]"
        if isinstance(item, str):
            runs.append(TextRun(text=item))
            continue
        run = _obj(item, what)
        _unknown(run, _RUN_KEYS, what)
        color = run.get("color")
        if color is not None:
            match = _COLOR.match(color) if isinstance(color, str) else None
            if match is None:
                raise _fail(f"{what}: 'color' must look like '#RRGGBB', got {color!r}")
            color = match.group(1).upper()
        font = run.get("font")
        if font is not None and (not isinstance(font, str) or not _FONT.match(font)):
            raise _fail(f"{what}: 'font' must be a font name of 1-64 plain characters")
        link = run.get("link")
        runs.append(
            TextRun(
                text=_text(run, "text", what),
                bold=_bool(run, "bold", what),
                italic=_bool(run, "italic", what),
                underline=_bool(run, "underline", what),
                strike=_bool(run, "strike", what),
                color=color,
                size_pt=_number(run, "size_pt", what, 1.0, 1000.0),
                font=font,
                link=None if link is None else validate_link(link, what),
            )
        )
    return RichText(tuple(runs))


def _parse_image(body: object, image_loader: ImageLoader | None) -> Image:
    obj = _obj(body, "$image")
    _unknown(obj, frozenset({"data", "storage_key", "width_mm", "height_mm", "alt"}), "$image")
    if ("data" in obj) == ("storage_key" in obj):
        raise _fail("$image needs exactly one of 'data' (base64) or 'storage_key'")
    if "data" in obj:
        encoded = obj["data"]
        if not isinstance(encoded, str):
            raise _fail("$image: 'data' must be a base64 string")
        if len(encoded) > MAX_IMAGE_BYTES * 4 // 3 + 4:
            raise _fail(f"$image: image larger than {MAX_IMAGE_BYTES} bytes")
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise _fail("$image: 'data' is not valid base64") from None
    else:
        key = obj["storage_key"]
        if not isinstance(key, str):
            raise _fail("$image: 'storage_key' must be a string")
        if image_loader is None:
            raise _fail("$image: storage keys are not available here (no image loader)")
        from convkit.errors import ConvKitError
        from convkit.ports import validate_key

        try:
            data = image_loader(validate_key(key))
        except FileNotFoundError:
            raise _fail(f"$image: no stored file {key!r}") from None
        except ConvKitError as exc:
            raise _fail(f"$image: cannot read {key!r}: {exc.message}") from None
    if len(data) > MAX_IMAGE_BYTES:
        raise _fail(f"$image: image larger than {MAX_IMAGE_BYTES} bytes")
    fmt, width, height = sniff_image(data)
    alt = _text(obj, "alt", "$image", default="")
    return Image(
        data=data,
        format=fmt,
        pixel_width=width,
        pixel_height=height,
        width_mm=_number(obj, "width_mm", "$image", 0.0, MAX_MM),
        height_mm=_number(obj, "height_mm", "$image", 0.0, MAX_MM),
        alt=alt,
    )


def sniff_image(data: bytes) -> tuple[str, int, int]:
    """(format, pixel width, pixel height) from an image's header.

    :raises TemplateError: (``invalid_rich_content``) not a PNG/JPEG/GIF/BMP, or a broken header.
    """
    try:
        if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR":
            width, height = struct.unpack(">II", data[16:24])
            return _dims("png", width, height)
        if data.startswith((b"GIF87a", b"GIF89a")):
            width, height = struct.unpack("<HH", data[6:10])
            return _dims("gif", width, height)
        if data.startswith(b"BM") and len(data) >= 26:
            width, height = struct.unpack("<ii", data[18:26])
            return _dims("bmp", width, abs(height))
        if data.startswith(b"\xff\xd8"):
            return _jpeg_dims(data)
    except struct.error:
        pass
    raise _fail("$image: not a PNG, JPEG, GIF or BMP image (or its header is broken)")


def _dims(fmt: str, width: int, height: int) -> tuple[str, int, int]:
    if not (0 < width <= 100_000 and 0 < height <= 100_000):
        raise _fail(f"$image: implausible image size {width}x{height}")
    return fmt, width, height


def _jpeg_dims(data: bytes) -> tuple[str, int, int]:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        # SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC) carry the frame size.
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return _dims("jpeg", width, height)
        pos += 2 + length
    raise _fail("$image: JPEG without a frame header")
