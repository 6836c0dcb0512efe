"""Finding the real services tests talk to.

A ``TEST_*_URL`` variable first, else the local default, else skip with a reason; but under
``CI=true`` a missing service is a failure, never a skip.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    try:
        with socket.create_connection((host, parts.port or default_port), timeout=1.0):
            return True
    except OSError:
        return False


def service_url(var: str, default: str, *, default_port: int) -> str:
    """Return the URL of a service for tests, or skip (locally) / fail (under CI=true)."""
    import pytest

    url = os.environ.get(var) or default
    if _reachable(url, default_port):
        return url
    reason = f"no service at {url} (set {var} to point the tests at one)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)
