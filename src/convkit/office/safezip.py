"""Safe reading of office documents: zip archives with bounded size, and XML without entities.

Every engine and the converter open user documents through here, so a zip bomb, a path in a
member name, a macro or an XML external entity is refused in one place, before any parser or
LibreOffice sees the document.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable
from pathlib import PurePosixPath
from typing import IO

import attrs
from lxml import etree

from convkit.errors import UnsafeDocument

__all__ = [
    "ZipLimits",
    "check_zip",
    "parse_xml",
    "read_zip",
    "xml_parser",
]


@attrs.frozen
class ZipLimits:
    """Bounds for one office archive. The defaults fit any real business document."""

    max_members: int = 2_000
    #: Sum of the members' real (decompressed) sizes.
    max_total_bytes: int = 512 * 1024 * 1024
    max_member_bytes: int = 256 * 1024 * 1024
    #: Decompressed/compressed size above which a member is a bomb, not a document.
    max_ratio: float = 200.0


DEFAULT_LIMITS = ZipLimits()

# Macro-bearing parts: OOXML's VBA project, ODF's Basic and script folders.
_MACRO_PARTS = ("vbaProject.bin", "vbaData.xml")
_MACRO_DIRS = ("Basic/", "Scripts/")


def _open(source: bytes | IO[bytes] | str) -> zipfile.ZipFile:
    stream: IO[bytes] | str = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        return zipfile.ZipFile(stream)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UnsafeDocument(f"not a valid zip archive: {exc}") from None


def _check_name(name: str) -> None:
    path = PurePosixPath(name)
    if (
        not name
        or name.startswith(("/", "\\"))
        or "\\" in name
        or "\x00" in name
        or ".." in path.parts
        or (len(name) > 1 and name[1] == ":")
    ):
        raise UnsafeDocument(f"zip member with an unsafe name: {name!r}")


def check_zip(
    source: bytes | IO[bytes] | str,
    *,
    limits: ZipLimits = DEFAULT_LIMITS,
    refuse_macros: bool = True,
) -> list[str]:
    """Check an archive's directory (without decompressing) and return its member names.

    Refuses: too many members, unsafe names, declared sizes over the limits, compression ratios of
    a bomb, and (with ``refuse_macros``) macro parts. Declared sizes can lie: :func:`read_zip`
    enforces the same bounds on the bytes actually decompressed.
    """
    with _open(source) as zf:
        infos = zf.infolist()
        if len(infos) > limits.max_members:
            raise UnsafeDocument(
                f"zip archive has {len(infos)} members (limit {limits.max_members})"
            )
        total = 0
        for info in infos:
            _check_name(info.filename)
            if info.file_size > limits.max_member_bytes:
                raise UnsafeDocument(f"zip member {info.filename!r} is too large")
            if info.compress_size and info.file_size / info.compress_size > limits.max_ratio:
                raise UnsafeDocument(f"zip member {info.filename!r} is compressed like a bomb")
            total += info.file_size
            if total > limits.max_total_bytes:
                raise UnsafeDocument("zip archive decompresses past the size limit")
            if refuse_macros and (
                info.filename.rsplit("/", 1)[-1] in _MACRO_PARTS
                or info.filename.startswith(_MACRO_DIRS)
            ):
                raise UnsafeDocument(f"documents with macros are refused ({info.filename!r})")
        return [i.filename for i in infos]


def read_zip(
    source: bytes | IO[bytes] | str,
    *,
    limits: ZipLimits = DEFAULT_LIMITS,
    refuse_macros: bool = True,
    only: Iterable[str] | None = None,
) -> dict[str, bytes]:
    """Check the archive, then decompress its members (or ``only`` those) with the limits
    enforced on the real bytes, so a member whose header lies about its size is caught too."""
    names = check_zip(source, limits=limits, refuse_macros=refuse_macros)
    wanted = set(names) if only is None else set(only) & set(names)
    out: dict[str, bytes] = {}
    total = 0
    with _open(source) as zf:
        for name in names:
            if name not in wanted or name.endswith("/"):
                continue
            buf = bytearray()
            try:
                with zf.open(name) as member:
                    while chunk := member.read(1024 * 1024):
                        buf += chunk
                        total += len(chunk)
                        if len(buf) > limits.max_member_bytes or total > limits.max_total_bytes:
                            raise UnsafeDocument("zip archive decompresses past the size limit")
            except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
                # Includes a CRC mismatch, which is how a lying header usually ends.
                raise UnsafeDocument(f"corrupt zip member {name!r}: {exc}") from None
            out[name] = bytes(buf)
    return out


def xml_parser(**kwargs: object) -> etree.XMLParser:
    """An lxml parser that resolves no entities, loads no DTD and touches no network."""
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        **kwargs,
    )


def parse_xml(data: bytes, *, part: str = "XML") -> etree._Element:
    """Parse ``data`` safely; a DOCTYPE (the door to entity expansion) is refused outright."""
    head = data[:4096].lstrip()
    if b"<!DOCTYPE" in head or b"<!ENTITY" in data[:65536]:
        raise UnsafeDocument(f"{part}: XML with a DOCTYPE or entity declarations is refused")
    try:
        return etree.fromstring(data, parser=xml_parser())
    except etree.XMLSyntaxError as exc:
        raise UnsafeDocument(f"{part}: not well-formed XML: {exc}") from None
