"""What every adapter shares: no framework imports here."""

from __future__ import annotations

from collections.abc import Callable

from convkit.http import API_PREFIX, HttpApi
from convkit.http.core import ClientDisconnected
from convkit.service import ConvKit

#: Every method reaches the core, so an unsupported one gets the API's JSON 405, not the
#: framework's own answer.
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE")


def as_api(kit: ConvKit | HttpApi) -> HttpApi:
    return kit if isinstance(kit, HttpApi) else HttpApi(kit)


def base_of(full_path: str, sub_path: str) -> str:
    """The mount point: the request path without the part the API routes on."""
    if sub_path not in ("", "/") and full_path.endswith(sub_path):
        return full_path[: -len(sub_path)] or API_PREFIX
    return full_path.rstrip("/") or API_PREFIX


def guarded(
    read: Callable[[int], bytes], disconnects: tuple[type[BaseException], ...]
) -> Callable[[int], bytes]:
    """``read``, with the framework's "client went away" errors (``disconnects``) raised as
    the core's :class:`ClientDisconnected`, which answers without logging an error."""

    def reader(limit: int) -> bytes:
        try:
            return read(limit)
        except disconnects as exc:
            raise ClientDisconnected(str(exc) or type(exc).__name__) from exc

    return reader
