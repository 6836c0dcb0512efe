"""A worker's probe server: ``/health``, ``/ready`` and any extra route (``/metrics``), served
by the standard library's HTTP server in a daemon thread, so no extra is needed.

``convkit worker`` starts one when ``HEALTH_PORT`` is set. The answers are those of the API's
key-free probes (:func:`convkit.http.core.ready_response`): no key, no messages.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from convkit.service import ConvKit

__all__ = ["HealthServer", "Route", "start_health_server"]

log = logging.getLogger("convkit.health")

#: A route: no arguments -> ``(status, headers, body)``.
Route = Callable[[], tuple[int, dict[str, str], bytes]]

_JSON = {"Content-Type": "application/json"}


def _json(status: int, payload: Any) -> tuple[int, dict[str, str], bytes]:
    return status, dict(_JSON), json.dumps(payload, separators=(",", ":")).encode()


#: Seconds a probe connection may take to send its request and read the answer.
PROBE_SOCKET_TIMEOUT_S = 5.0


class _QuietServer(ThreadingHTTPServer):
    """A probe that gave up before reading its answer (a timed-out kubelet) is one DEBUG line,
    not socketserver's traceback on stderr, which would break the JSON log stream."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("probe connection from %s ended early", client_address, exc_info=True)


class HealthServer:
    """Serves ``GET``/``HEAD`` on ``/health`` (liveness: 200 while the process answers),
    ``/ready`` (readiness of what this process uses: 200, or 503 naming the failing checks),
    ``/metrics`` (the ``metrics_exposition`` hook's answer) and every path of ``routes``;
    anything else is a JSON 404. ``port`` 0 picks a free port (see :attr:`port`).
    :attr:`routes` may gain entries after the start.

    :raises OSError: the address cannot be bound.
    """

    def __init__(
        self,
        kit: ConvKit,
        host: str = "0.0.0.0",  # noqa: S104  # probes come from outside the container
        port: int = 0,
        routes: dict[str, Route] | None = None,
    ) -> None:
        self.kit = kit
        self.routes: dict[str, Route] = {
            "/health": lambda: _json(200, {"status": "ok"}),
            "/ready": self._ready,
            "/metrics": self._metrics,
            **(routes or {}),
        }
        server = self

        class Handler(BaseHTTPRequestHandler):
            # A client that opens a connection and sends nothing (or half a request) holds its
            # thread for this long at most, not forever.
            timeout = PROBE_SOCKET_TIMEOUT_S

            def do_GET(self) -> None:
                server._answer(self, body=True)

            def do_HEAD(self) -> None:
                server._answer(self, body=False)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug(format, *args)

        self._httpd = _QuietServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self._httpd.server_address[1])

    def _ready(self) -> tuple[int, dict[str, str], bytes]:
        from convkit.http.core import ready_response

        response = ready_response(self.kit, details=False)
        assert isinstance(response.body, bytes)
        return response.status, dict(response.headers), response.body

    def _metrics(self) -> tuple[int, dict[str, str], bytes]:
        # The worker's scrape target: whichever plugin serves metrics (convkit[metrics]), with
        # the same METRICS_TOKEN-free access as the other probes on this port.
        answer = self.kit.pm.hook.metrics_exposition(kit=self.kit)
        if answer is None:
            return _json(404, {"error": {"code": "not_found", "message": "metrics are off"}})
        status, headers, content = answer
        return status, dict(headers), content

    def _answer(self, handler: BaseHTTPRequestHandler, *, body: bool) -> None:
        route = self.routes.get(handler.path.split("?", 1)[0].rstrip("/") or "/")
        try:
            if route is None:
                status, headers, content = _json(
                    404, {"error": {"code": "not_found", "message": "no such probe"}}
                )
            else:
                status, headers, content = route()
        except Exception:
            log.exception("health route %s failed", handler.path)
            status, headers, content = _json(
                500, {"error": {"code": "internal_error", "message": "internal error"}}
            )
        handler.send_response(status)
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(content)))
        handler.end_headers()
        if body:
            handler.wfile.write(content)

    def start(self) -> HealthServer:
        """Serve in a daemon thread; returns self."""
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="convkit-health", daemon=True
        )
        self._thread.start()
        log.info("health server listening", extra={"port": self.port})
        return self

    def stop(self) -> None:
        """Stop serving and close the socket. Idempotent."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()


def start_health_server(kit: ConvKit) -> HealthServer | None:
    """The started server on ``HEALTH_PORT``, or None when it is 0 (the default)."""
    port = kit.settings.health_port
    return HealthServer(kit, port=port).start() if port else None
