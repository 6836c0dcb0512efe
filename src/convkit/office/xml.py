"""XML names, text and tree helpers every office engine uses.

* :func:`qn` turns ``"w:p"``, ``"text:p"``, ``"x:row"`` into lxml's ``{namespace}local`` form.
* :func:`clean_xml_text`, :func:`escape_plain`, :func:`unescape_xml` and :func:`normalize_tag`
  are the one set of text rules: what XML 1.0 cannot carry is dropped, and the typographic
  quotes and spaces an office suite types into a tag (one table, :data:`TAG_TYPOGRAPHY`) become
  the plain ones Jinja reads.
* The tree helpers move text around elements the way a tag replacing an element needs.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from lxml import etree

from convkit.templating.rich import is_rich_candidate, parse_rich, plain_text

__all__ = [
    "NAMESPACES",
    "TAG_TYPOGRAPHY",
    "ancestor",
    "attached",
    "clean_xml_text",
    "escape_plain",
    "normalize_tag",
    "plain_xml",
    "qn",
    "remove_keep_tail",
    "replace_with_text",
    "text_before",
    "unescape_xml",
    "with_namespaces",
]

#: Prefix -> namespace URI, for :func:`qn` (OOXML, OPC, ODF, and convkit's private markers).
NAMESPACES = {
    # WordprocessingML, DrawingML, relationships and packaging
    "w": "http://schemas.openxmlformats.org/wordprocessingml/2006/main",
    "r": "http://schemas.openxmlformats.org/officeDocument/2006/relationships",
    "wp": "http://schemas.openxmlformats.org/drawingml/2006/wordprocessingDrawing",
    "a": "http://schemas.openxmlformats.org/drawingml/2006/main",
    "pic": "http://schemas.openxmlformats.org/drawingml/2006/picture",
    "rel": "http://schemas.openxmlformats.org/package/2006/relationships",
    "ct": "http://schemas.openxmlformats.org/package/2006/content-types",
    # SpreadsheetML (its documents use it as the default namespace)
    "x": "http://schemas.openxmlformats.org/spreadsheetml/2006/main",
    # OpenDocument
    "office": "urn:oasis:names:tc:opendocument:xmlns:office:1.0",
    "style": "urn:oasis:names:tc:opendocument:xmlns:style:1.0",
    "text": "urn:oasis:names:tc:opendocument:xmlns:text:1.0",
    "table": "urn:oasis:names:tc:opendocument:xmlns:table:1.0",
    "draw": "urn:oasis:names:tc:opendocument:xmlns:drawing:1.0",
    "fo": "urn:oasis:names:tc:opendocument:xmlns:xsl-fo-compatible:1.0",
    "xlink": "http://www.w3.org/1999/xlink",
    "svg": "urn:oasis:names:tc:opendocument:xmlns:svg-compatible:1.0",
    "manifest": "urn:oasis:names:tc:opendocument:xmlns:manifest:1.0",
    "loext": "urn:org:documentfoundation:names:experimental:office:xmlns:loext:1.0",
    "xml": "http://www.w3.org/XML/1998/namespace",
    # convkit's markers between a render and its post-processing; none survive a render
    "ck": "urn:x-convkit:office-markers",
}


@functools.cache
def qn(name: str) -> str:
    """``"w:p"`` -> ``"{http://schemas.openxmlformats.org/wordprocessingml/2006/main}p"``."""
    prefix, _, local = name.partition(":")
    return f"{{{NAMESPACES[prefix]}}}{local}"


# --------------------------------------------------------------------------------------------------
# Text

# Everything XML 1.0 cannot carry (C0 controls but tab/LF/CR, surrogates, U+FFFE/U+FFFF).
_XML_ILLEGAL = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")

#: What Word and LibreOffice type instead of the quotes and spaces of a Jinja tag: double and
#: single smart quotes (including the German low-9 ones), no-break and thin spaces. One
#: character for one, so positions in a tag's text stay where they were.
TAG_TYPOGRAPHY = str.maketrans(
    {
        "\u201c": '"',
        "\u201d": '"',
        "\u201e": '"',
        "\u201f": '"',
        "\u2018": "'",
        "\u2019": "'",
        "\u201a": "'",
        "\u201b": "'",
        "\xa0": " ",
        "\u2007": " ",
        "\u2009": " ",
        "\u202f": " ",
        "\n": " ",
        "\r": " ",
        "\t": " ",
    }
)


def clean_xml_text(text: str) -> str:
    """``text`` without the characters XML 1.0 cannot carry (dropped, not replaced)."""
    return _XML_ILLEGAL.sub("", text)


def escape_plain(text: str) -> str:
    """Escape ``text`` for XML element content or an attribute value, keeping newlines and tabs
    as character references (attribute normalisation would turn them into spaces)."""
    text = clean_xml_text(text)
    return (
        text.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("'", "&apos;")
        .replace("\r", "&#13;")
        .replace("\n", "&#10;")
        .replace("\t", "&#9;")
    )


_ENTITIES = (
    ("&lt;", "<"),
    ("&gt;", ">"),
    ("&quot;", '"'),
    ("&apos;", "'"),
    ("&#10;", " "),
    ("&#13;", " "),
    ("&#9;", " "),
)


def plain_xml(value: Any) -> str:
    """A template value as escaped XML text where no markup may go (attributes, properties,
    spreadsheet cells): markup is kept as it is (less what XML cannot carry), rich content
    (:mod:`convkit.templating.rich`) becomes its plain text, an image its description."""
    if hasattr(value, "__html__"):
        return clean_xml_text(str(value.__html__()))
    if is_rich_candidate(value):
        rich = parse_rich(value)
        if rich is not None:
            return escape_plain(plain_text(rich))
    return escape_plain(str(value))  # an Undefined raises here under strict mode


def unescape_xml(text: str) -> str:
    """Undo what lxml's serializer did to a Jinja tag's text (one level)."""
    if "&" not in text:
        return text
    for entity, char in _ENTITIES:
        text = text.replace(entity, char)
    return text.replace("&amp;", "&")


def normalize_tag(text: str) -> str:
    """A Jinja tag as typed in an office suite, as Jinja must read it (:data:`TAG_TYPOGRAPHY`)."""
    return text.translate(TAG_TYPOGRAPHY)


# --------------------------------------------------------------------------------------------------
# Trees


def ancestor(el: etree._Element, tags: frozenset[str]) -> etree._Element | None:
    """``el`` or its nearest ancestor whose tag is one of ``tags``."""
    node: etree._Element | None = el
    while node is not None:
        if node.tag in tags:
            return node
        node = node.getparent()
    return None


def attached(el: etree._Element, root: etree._Element) -> bool:
    """Whether ``el`` is still in the tree of ``root`` (an earlier edit may have removed it)."""
    node: etree._Element | None = el
    while node is not None:
        if node is root:
            return True
        node = node.getparent()
    return False


def text_before(el: etree._Element, text: str) -> None:
    """Put ``text`` right before ``el`` (its previous sibling's tail or its parent's text)."""
    prev = el.getprevious()
    if prev is not None:
        prev.tail = (prev.tail or "") + text
    else:
        parent = el.getparent()
        assert parent is not None
        parent.text = (parent.text or "") + text


def replace_with_text(el: etree._Element, text: str) -> None:
    """Remove ``el``, leaving ``text`` (then ``el``'s tail) where it was."""
    text_before(el, text + (el.tail or ""))
    parent = el.getparent()
    assert parent is not None
    parent.remove(el)


def remove_keep_tail(el: etree._Element) -> None:
    """Remove ``el`` but keep the text after it."""
    if el.getparent() is not None:
        replace_with_text(el, "")


def with_namespaces(root: etree._Element, extra: dict[str, str]) -> etree._Element:
    """``root`` with the ``extra`` prefixes declared on it (lxml cannot add declarations to an
    element, so a new root takes over the children). A prefix the document already binds to
    another URI keeps the document's binding."""
    missing = {
        p: u for p, u in extra.items() if u not in root.nsmap.values() and p not in root.nsmap
    }
    if not missing:
        return root
    new = etree.Element(root.tag, attrib=dict(root.attrib), nsmap={**root.nsmap, **missing})
    new.text = root.text
    for child in list(root):
        new.append(child)
    return new
