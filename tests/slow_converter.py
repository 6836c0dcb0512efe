"""A third-party-style plugin for the shutdown tests: a text -> PDF converter that takes
SLOW_CONVERT_SECONDS, so a conversion is reliably in flight when a signal arrives. Like the
LibreOffice pool, its ``shutdown`` stops a conversion in progress (which then fails)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from convkit import Settings, hookimpl
from convkit.errors import ConversionError
from convkit.ports import Converter
from convkit.settings import Setting


class SlowConverter(Converter):
    name = "slow"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._stopped = threading.Event()

    def targets(self, source_format: str) -> frozenset[str]:
        return frozenset({"pdf"}) if source_format == "txt" else frozenset()

    def convert(
        self,
        src: Path,
        dst: Path,
        *,
        source_format: str,
        target_format: str,
        options: dict[str, Any] | None = None,
        locale: str | None = None,
    ) -> None:
        if self._stopped.wait(self.seconds):
            raise ConversionError("the slow converter was shut down mid-conversion")
        dst.write_bytes(b"%PDF-1.4 slow\n" + src.read_bytes())

    def shutdown(self) -> None:
        self._stopped.set()


@hookimpl
def register_settings() -> list[Setting]:
    return [
        Setting("SLOW_CONVERT_SECONDS", "seconds", 0.0, "How long one conversion takes.", minimum=0)
    ]


@hookimpl
def register_converters(settings: Settings) -> list[Converter]:
    return [SlowConverter(settings.get("SLOW_CONVERT_SECONDS"))]
