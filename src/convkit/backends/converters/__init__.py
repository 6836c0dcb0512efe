"""Built-in converters: LibreOffice (a warm, self-healing pool of soffice processes)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

from convkit.hookspecs import hookimpl

if TYPE_CHECKING:
    from convkit.ports import Converter, DoctorCheck
    from convkit.service import ConvKit
    from convkit.settings import Settings


@hookimpl
def register_converters(settings: Settings, hook: pluggy.HookRelay) -> list[Converter]:
    """Register the built-in LibreOffice converter (spawns nothing until used)."""
    from convkit.backends.converters.libreoffice import LibreOfficeConverter

    return [
        LibreOfficeConverter(
            timeout_s=settings.office_timeout_seconds,
            pool_size=settings.office_pool_size,
            max_tasks=settings.office_max_tasks,
            max_rss_mb=settings.office_max_rss_mb,
            hook=hook,
        )
    ]


@hookimpl
def doctor_checks(kit: ConvKit) -> list[DoctorCheck]:
    """LibreOffice's doctor checks, when this instance converts with it."""
    from convkit.backends.converters.libreoffice import LibreOfficeConverter
    from convkit.backends.converters.libreoffice import doctor_checks as libreoffice_checks

    if not any(isinstance(c, LibreOfficeConverter) for c in kit.converters):
        return []
    return libreoffice_checks(kit.settings)
