"""What a document must pass before LibreOffice sees it, and the private place it is seen in.

LibreOffice itself is locked down by the helper (profile settings and load arguments: no macros,
no link updates, no fetching of linked resources, see ``uno_helper.py``). Here, in the app's
process: ZIP containers are checked for bombs on their real decompressed bytes, flat XML with a
DOCTYPE (the door to external entities) is refused, and each conversion gets its own mode-0700
directory under a fixed file name, so a caller's path never reaches LibreOffice.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path

from convkit.errors import ConversionError, UnsafeDocument
from convkit.office.safezip import DEFAULT_LIMITS, ZipLimits, read_zip
from convkit.tempdirs import make_owned_dir

from .formats import Source

__all__ = ["check_document", "conversion_dir", "sanitize_html"]

_XML_HEAD = 64 * 1024


def check_document(path: Path, source: Source, *, limits: ZipLimits = DEFAULT_LIMITS) -> None:
    """Refuse ``path`` with UnsafeDocument if it is a zip bomb or flat XML with a DOCTYPE.

    Macros are not refused here: LibreOffice never runs them (the helper forbids execution), and
    refusing every document that carries one would turn away ordinary ODF files. A ZIP container
    that is no ZIP at all is left to LibreOffice, which fails it as a ConversionError.
    """
    if source.zipped:
        if not zipfile.is_zipfile(path):
            return
        # read_zip decompresses every member with the limits enforced on the real bytes, so a
        # header that lies about its size is caught as well as a plain bomb.
        read_zip(str(path), limits=limits, refuse_macros=False)
    elif source.format == "html":
        sanitize_html(path)
    elif source.format == "fodt":
        with open(path, "rb") as fh:
            head = fh.read(_XML_HEAD)
        if b"<!DOCTYPE" in head or b"<!ENTITY" in head:
            raise UnsafeDocument("flat XML with a DOCTYPE or entity declarations is refused")


@contextlib.contextmanager
def conversion_dir() -> Iterator[Path]:
    """A fresh mode-0700 directory for one conversion, removed afterwards whatever happens."""
    try:
        work = make_owned_dir("convkit-lo-job-")
    except OSError as exc:
        raise ConversionError(f"cannot create a temporary directory: {exc.strerror}") from exc
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


# Attributes through which LibreOffice's HTML import loads something (hyperlinks, <a href>, are
# not loaded and stay).
_FETCHING_ATTRS = (
    "src",
    "background",
    "data",
    "poster",
    "lowsrc",
    "dynsrc",
    "srcset",
    "codebase",
    "archive",
    "longdesc",
    "classid",
)
_DROP_TAGS = ("script", "base", "applet", "meta")
_CSS_URL = re.compile(r"url\(\s*(['\"]?)(?!data:)[^)]*\)", re.IGNORECASE)
_CSS_IMPORT = re.compile(r"@import[^;]*;?", re.IGNORECASE)


_DECLARED_CHARSET = re.compile(rb"<meta[^>]+charset|^\xef\xbb\xbf", re.IGNORECASE)


def _local(value: str) -> bool:
    return value.strip().lower().startswith(("data:", "#")) or not value.strip()


def sanitize_html(path: Path) -> None:
    """Rewrite HTML so LibreOffice has nothing to fetch.

    LibreOffice's profile settings stop linked images, but its HTML import still requests
    stylesheets, frames and CSS backgrounds. So every reference that is not a ``data:`` URI is
    removed before it loads: fetching attributes (``src``, ``background``...), ``<link>`` elements,
    ``url(...)`` and ``@import`` in CSS, ``<base>``, ``<script>`` and ``<meta>`` (a refresh is a
    fetch). Relative references go too: resolved against the input's directory they would read
    local files. Embedded ``data:`` images stay.
    """
    from lxml import etree, html

    raw = path.read_bytes()
    if not raw.strip():
        return
    # Without a declared charset, lxml (like LibreOffice) reads bytes as Latin-1: a UTF-8 upload
    # would come out as mojibake. UTF-8 that decodes cleanly is taken for UTF-8.
    encoding = None
    if not _DECLARED_CHARSET.search(raw[:4096]):
        try:
            raw.decode("utf-8")
            encoding = "utf-8"
        except UnicodeDecodeError:
            encoding = None
    parser = html.HTMLParser(encoding=encoding) if encoding else None
    try:
        doc = html.document_fromstring(raw, parser=parser)
    except (etree.ParserError, ValueError):
        return  # nothing LibreOffice could parse either
    for el in list(doc.iter()):
        if not isinstance(el.tag, str):
            continue
        tag = el.tag.lower()
        if tag in _DROP_TAGS or (tag == "link" and not _local(el.get("href", ""))):
            el.drop_tree()
            continue
        for attr in _FETCHING_ATTRS:
            if attr in el.attrib and not _local(el.attrib[attr]):
                del el.attrib[attr]
        if tag in ("iframe", "frame", "object", "embed") and "href" in el.attrib:
            del el.attrib["href"]
        if "style" in el.attrib:
            el.attrib["style"] = _CSS_IMPORT.sub("", _CSS_URL.sub("url()", el.attrib["style"]))
        if tag == "style" and el.text:
            el.text = _CSS_IMPORT.sub("", _CSS_URL.sub("url()", el.text))
    head = doc.find("head")
    if head is None:
        head = etree.Element("head")
        doc.insert(0, head)
    meta = etree.Element(
        "meta", {"http-equiv": "Content-Type", "content": "text/html; charset=utf-8"}
    )
    head.insert(0, meta)
    path.write_bytes(html.tostring(doc, encoding="utf-8", method="html", doctype="<!DOCTYPE html>"))
