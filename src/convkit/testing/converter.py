"""Contract tests every :class:`convkit.ports.Converter` must pass.

Subclass :class:`ConverterContract` and provide ``converter`` and ``sample_document``, a
``(path, source_format, expected_text)`` triple. The PDF check extracts text with ``pypdf``
(in ``convkit[test]``). Override ``corrupt_document`` when any byte string is a valid document
of the sample's format (html, txt): the default is a broken ZIP container with its suffix.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from convkit.errors import ConversionError, ValidationError
from convkit.ports import Converter

__all__ = ["ConverterContract"]

SampleDocument = tuple[Path, str, str]


class ConverterContract:
    """Base class of a converter's contract tests (fixtures ``converter``, ``sample_document``,
    optionally ``corrupt_document``)."""

    @pytest.fixture
    def converter(self) -> Converter:
        raise NotImplementedError("provide a `converter` fixture")

    @pytest.fixture
    def sample_document(self) -> SampleDocument:
        raise NotImplementedError("provide `sample_document`: (path, source_format, text)")

    @pytest.fixture
    def corrupt_document(self, sample_document: SampleDocument, tmp_path: Path) -> tuple[Path, str]:
        """``(path, source_format)`` of an input the converter must reject."""
        _, fmt, _ = sample_document
        path = tmp_path / f"corrupt.{fmt}"
        path.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 8)
        return path, fmt

    @pytest.fixture
    def private_tempdir(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
        """Point :mod:`tempfile` at an empty directory, to see what a conversion leaves there."""
        tmp = tmp_path / "tempdir"
        tmp.mkdir()
        monkeypatch.setattr(tempfile, "tempdir", str(tmp))
        return tmp

    def test_targets_of_unknown_format_is_empty(self, converter: Converter) -> None:
        assert converter.targets("no-such-format") == frozenset()

    def test_converts_to_pdf(
        self, converter: Converter, sample_document: SampleDocument, tmp_path: Path
    ) -> None:
        from pypdf import PdfReader

        src, fmt, expected = sample_document
        if "pdf" not in converter.targets(fmt):
            pytest.skip(f"{converter.name} makes no pdf from {fmt}")
        dst = tmp_path / "out.pdf"
        converter.convert(src, dst, source_format=fmt, target_format="pdf")
        assert dst.read_bytes().startswith(b"%PDF")
        text = "".join(page.extract_text() for page in PdfReader(dst).pages)
        assert expected in text

    def test_unsupported_target_is_rejected(
        self, converter: Converter, sample_document: SampleDocument, tmp_path: Path
    ) -> None:
        src, fmt, _ = sample_document
        assert "no-such-format" not in converter.targets(fmt)
        with pytest.raises((ValidationError, ConversionError)):
            converter.convert(
                src, tmp_path / "out.bin", source_format=fmt, target_format="no-such-format"
            )

    def test_corrupt_input_is_conversion_error(
        self,
        converter: Converter,
        corrupt_document: tuple[Path, str],
        tmp_path: Path,
        private_tempdir: Path,
    ) -> None:
        src, fmt = corrupt_document
        targets = converter.targets(fmt)
        assert targets, f"{converter.name} converts nothing from {fmt}"
        target = "pdf" if "pdf" in targets else sorted(targets)[0]
        dst = tmp_path / f"out.{target}"
        with pytest.raises(ConversionError):
            converter.convert(src, dst, source_format=fmt, target_format=target)
        assert not dst.exists()
        converter.close()
        assert list(private_tempdir.iterdir()) == []
