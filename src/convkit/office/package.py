"""Reading and writing office packages (OPC for DOCX/XLSX, ODF for ODT): members in their
archive order, relationship parts, and deterministic zip entries."""

from __future__ import annotations

import io
import posixpath
import zipfile
from collections.abc import Iterable

from lxml import etree

from convkit.office.safezip import DEFAULT_LIMITS, ZipLimits, parse_xml, read_zip
from convkit.office.xml import NAMESPACES, qn

__all__ = [
    "FIXED_TIME",
    "Member",
    "add_relationships",
    "read_package",
    "relationships",
    "rels_name",
    "write_package",
    "xml_bytes",
    "zip_entry",
]

#: Every member's timestamp: the same template and data give the same bytes.
FIXED_TIME = (1980, 1, 1, 0, 0, 0)

#: (archive name, bytes, compressed?) of one member.
Member = tuple[str, bytes, bool]


def read_package(source: bytes, *, limits: ZipLimits = DEFAULT_LIMITS) -> list[Member]:
    """The members of a (checked, bounded) archive in their order, folders left out."""
    files = read_zip(source, limits=limits)
    with zipfile.ZipFile(io.BytesIO(source)) as zf:
        infos = [i for i in zf.infolist() if i.filename in files]
    return [(i.filename, files[i.filename], i.compress_type != zipfile.ZIP_STORED) for i in infos]


def zip_entry(name: str, compressed: bool = True) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=FIXED_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    return info


def write_package(members: Iterable[Member], *, compress_level: int | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compresslevel=compress_level) as zf:
        for name, data, compressed in members:
            zf.writestr(zip_entry(name, compressed), data)
    return buf.getvalue()


def xml_bytes(root: etree._Element, *, standalone: bool | None = True) -> bytes:
    """``root`` serialized with an XML declaration, as office suites write their parts."""
    return bytes(
        etree.tostring(root, xml_declaration=True, encoding="UTF-8", standalone=standalone)
    )


def rels_name(part: str) -> str:
    """``word/document.xml`` -> ``word/_rels/document.xml.rels``."""
    folder, base = posixpath.split(part)
    return posixpath.join(folder, "_rels", base + ".rels")


def relationships(files: dict[str, bytes], part: str) -> dict[str, tuple[str, str]]:
    """The internal relationships of ``part``: id -> (type, resolved member name)."""
    name = rels_name(part)
    if name not in files:
        return {}
    folder = posixpath.dirname(part)
    out = {}
    for rel in parse_xml(files[name], part=name):
        target = rel.get("Target", "")
        if rel.get("TargetMode") == "External":
            continue
        path = (
            target.lstrip("/")
            if target.startswith("/")
            else posixpath.normpath(posixpath.join(folder, target))
        )
        out[rel.get("Id", "")] = (rel.get("Type", ""), path)
    return out


def add_relationships(original: bytes | None, new: list[tuple[str, str, str, bool]]) -> bytes:
    """A relationship part with ``new`` (id, type, target, external) added to ``original``."""
    if original is not None and not new:
        return original
    if original is None:
        root = etree.Element(qn("rel:Relationships"), nsmap={None: NAMESPACES["rel"]})
    else:
        root = parse_xml(original, part="relationships")
    for rid, kind, target, external in new:
        el = etree.SubElement(root, qn("rel:Relationship"), Id=rid, Type=kind, Target=target)
        if external:
            el.set("TargetMode", "External")
    return xml_bytes(root)
