"""Hardening of the LibreOffice converter, each rule proven against a real soffice.

An HTTP listener on 127.0.0.1 counts requests: documents linking to it must produce none.
"""

from __future__ import annotations

import io
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pypdf import PdfReader

from convkit.backends.converters.libreoffice import LibreOfficeConverter
from convkit.backends.converters.libreoffice.process import OfficeProcess
from convkit.errors import UnsafeDocument
from tests.fixtures.office import docx, fodt, html_with_remote, odt_with_macro, zip_bomb_docx
from tests.fixtures.office.support import Listener, leftover_soffice, require_soffice

pytestmark = pytest.mark.libreoffice


@pytest.fixture(scope="module", autouse=True)
def _no_soffice_left() -> Iterator[None]:
    yield
    assert leftover_soffice() == []


@pytest.fixture(scope="module")
def lo() -> Iterator[LibreOfficeConverter]:
    require_soffice()
    converter = LibreOfficeConverter(pool_size=1, timeout_s=60)
    converter.start()
    yield converter
    converter.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    yield server
    server.close()


def _convert(lo: LibreOfficeConverter, tmp: Path, data: bytes | str, src: str) -> bytes:
    path = tmp / f"in.{src}"
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
    out = tmp / f"out-{src}.pdf"
    lo.convert(path, out, source_format=src, target_format="pdf")
    return out.read_bytes()


def _text(pdf: bytes) -> str:
    return "\n".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf)).pages)


def _images(pdf: bytes) -> int:
    return sum(len(p.images) for p in PdfReader(io.BytesIO(pdf)).pages)


def test_macros_never_run(lo: LibreOfficeConverter, tmp_path: Path) -> None:
    sentinel = tmp_path / "macro-ran"
    pdf = _convert(lo, tmp_path, odt_with_macro("Document with a macro", str(sentinel)), "odt")
    assert "Document with a macro" in _text(pdf)
    assert not sentinel.exists()


def test_docx_external_image_is_not_fetched(
    lo: LibreOfficeConverter, listener: Listener, tmp_path: Path
) -> None:
    src = docx(["Linked image below"], linked_images=[f"{listener.url}/x.png"])
    pdf = _convert(lo, tmp_path, src, "docx")
    assert "Linked image below" in _text(pdf)
    assert listener.requests == []


def test_fodt_links_are_not_fetched(
    lo: LibreOfficeConverter, listener: Listener, tmp_path: Path
) -> None:
    src = fodt(
        "Flat ODT with links",
        image_url=f"{listener.url}/x.png",
        section_url=f"{listener.url}/section.txt",
    )
    pdf = _convert(lo, tmp_path, src, "fodt")
    assert "Flat ODT with links" in _text(pdf)
    assert "REMOTE-CONTENT" not in _text(pdf)
    assert listener.requests == []


def test_html_remote_references_are_not_fetched(
    lo: LibreOfficeConverter, listener: Listener, tmp_path: Path
) -> None:
    pdf = _convert(lo, tmp_path, html_with_remote(listener.url), "html")
    assert "Remote references" in _text(pdf)
    assert listener.requests == []


def test_local_file_links_put_nothing_in_the_output(
    lo: LibreOfficeConverter, tmp_path: Path
) -> None:
    src = fodt("Local links", image_url="file:///etc/passwd", section_url="file:///etc/passwd")
    text = _text(_convert(lo, tmp_path, src, "fodt"))
    assert "Local links" in text
    assert "root:" not in text
    docx_src = docx(["Local image link"], linked_images=["file:///etc/passwd"])
    assert "root:" not in _text(_convert(lo, tmp_path, docx_src, "docx"))


def test_embedded_image_still_shows(lo: LibreOfficeConverter, tmp_path: Path) -> None:
    """Guard against over-blocking: a picture inside the document is in the PDF."""
    pdf = _convert(lo, tmp_path, docx(["Embedded picture"], embedded_image=True), "docx")
    assert "Embedded picture" in _text(pdf)
    assert _images(pdf) == 1


@pytest.mark.parametrize("kind", ["size", "members", "lying"])
def test_zip_bombs_are_refused_before_libreoffice(
    lo: LibreOfficeConverter, tmp_path: Path, kind: str
) -> None:
    seen: list[str] = []
    lo.pool.on_dispatch = lambda proc, request: seen.append(request["src"])
    try:
        src = tmp_path / "bomb.docx"
        src.write_bytes(zip_bomb_docx(kind))
        with pytest.raises(UnsafeDocument) as exc:
            lo.convert(src, tmp_path / "bomb.pdf", source_format="docx", target_format="pdf")
        assert exc.value.code == "unsafe_document"
        assert seen == []  # LibreOffice never got the request
        assert not (tmp_path / "bomb.pdf").exists()
    finally:
        lo.pool.on_dispatch = None


def test_flat_xml_with_entities_is_refused(lo: LibreOfficeConverter, tmp_path: Path) -> None:
    src = tmp_path / "xxe.fodt"
    src.write_bytes(
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
        + fodt("&e;").split(b"?>", 1)[1]
    )
    with pytest.raises(UnsafeDocument):
        lo.convert(src, tmp_path / "x.pdf", source_format="fodt", target_format="pdf")


def test_each_conversion_has_its_own_private_dir(lo: LibreOfficeConverter, tmp_path: Path) -> None:
    seen: list[tuple[Path, int]] = []

    def record(proc: OfficeProcess, request: dict[str, Any]) -> None:
        work = Path(request["src"]).parent
        seen.append((work, stat.S_IMODE(work.stat().st_mode)))

    lo.pool.on_dispatch = record
    try:
        for i in range(2):
            _convert(lo, tmp_path, f"private {i}\n", "txt")
    finally:
        lo.pool.on_dispatch = None
    assert [mode for _, mode in seen] == [0o700, 0o700]
    assert seen[0][0] != seen[1][0]
    assert not any(work.exists() for work, _ in seen)  # removed afterwards


def test_html_data_image_still_shows(lo: LibreOfficeConverter, tmp_path: Path) -> None:
    import base64

    from tests.fixtures.office import png

    data = base64.b64encode(png(16, 16)).decode()
    page = f'<p>Inline picture</p><p><img src="data:image/png;base64,{data}" width="16"></p>'
    pdf = _convert(lo, tmp_path, page, "html")
    assert "Inline picture" in _text(pdf)
    assert _images(pdf) == 1
