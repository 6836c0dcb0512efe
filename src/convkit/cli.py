"""The ``convkit`` command: serve | worker | render | cleanup | migrate | doctor."""

from __future__ import annotations

import json
import logging
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from convkit.errors import ConfigError, ConvKitError, ServiceUnavailable
from convkit.settings import Settings, Tenant

log = logging.getLogger("convkit.cli")


class _Group(click.Group):
    """Turns convkit errors into one line on stderr and exit code 2, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConvKitError as exc:
            click.echo(f"convkit: error: {exc.message}", err=True)
            sys.exit(2)


@click.group(cls=_Group)
@click.version_option(package_name="convkit")
def main() -> None:
    """convkit: templates + JSON data -> documents, as durable jobs."""


def _settings() -> Settings:
    return Settings.from_env()


def _wait_for_database(settings: Settings) -> Settings:
    """Return ``settings`` once the job database answers; retry (logging each attempt) for up
    to STARTUP_WAIT_SECONDS, so a process started beside its database does not die first.

    :raises ServiceUnavailable: still unreachable after the wait (one line, exit 2).
    """
    from convkit.service import open_job_store

    store = open_job_store(settings)
    deadline = time.monotonic() + settings.startup_wait_seconds
    delay, attempt = 0.5, 1
    try:
        while True:
            try:
                store.check()
                return settings
            except ServiceUnavailable as exc:
                left = deadline - time.monotonic()
                if left <= 0:
                    waited = f"{settings.startup_wait_seconds:g}"
                    raise ServiceUnavailable(
                        f"{exc.message} (gave up after STARTUP_WAIT_SECONDS={waited})"
                    ) from None
                log.warning(
                    "database not reachable yet (attempt %d, %.0f s left): %s",
                    attempt,
                    left,
                    exc.message,
                )
                time.sleep(min(delay, left))
                delay, attempt = min(delay * 2, 5.0), attempt + 1
    finally:
        store.close()


@main.command()
@click.option(
    "--framework",
    type=click.Choice(["fastapi", "flask", "django"]),
    default="fastapi",
    show_default=True,
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, type=int, show_default=True)
def serve(framework: str, host: str, port: int) -> None:
    """Serve the v1 API with in-process workers (migrates an empty database first).

    Without API_KEY or API_KEYS, a random key is generated and printed once. SIGTERM or SIGINT
    stops it gracefully (see ``Worker.stop``) and it exits 0.
    """
    import attrs

    from convkit.logs import configure_logging
    from convkit.service import ConvKit
    from convkit.settings import Tenant
    from convkit.tempdirs import remove_orphans
    from convkit.worker import Worker

    configure_logging()
    stop = _StopSignals()
    settings = _wait_for_database(_settings())
    # Listening first: a busy port is a one-line error before anything starts (a failure
    # before the try below ends the process, which closes the socket).
    sock = _listen(host, port)
    if not settings.api_keys:
        key = secrets.token_urlsafe(24)
        settings = attrs.evolve(settings, api_keys={key: Tenant("default")})
        click.echo(f"convkit: no API_KEY set; generated one for this run: {key}", err=True)
    kit = ConvKit.from_settings(settings, migrate=True)
    remove_orphans()
    worker = Worker(kit)
    # Threads of this process consume the queue, or an eager queue runs jobs inside requests;
    # otherwise this is an API-only replica and its readiness leaves the converter out.
    threads = kit.queue.consumes_in_process and settings.worker_threads > 0
    kit.runs_jobs = threads or kit.queue.completes_on_enqueue
    if threads:
        worker.start()
    url = f"http://{host}:{sock.getsockname()[1]}/api/v1"
    click.echo(f"convkit: serving {framework} on {url}", err=True)
    try:
        if framework == "fastapi":
            from convkit.adapters.fastapi import create_app

            _serve_asgi(create_app(kit), sock, stop, settings.shutdown_grace_seconds)
        else:
            app: Any
            if framework == "flask":
                from convkit.adapters.flask import create_app as create_flask

                app = create_flask(kit)
            else:
                from convkit.adapters.django import create_wsgi_app

                app = create_wsgi_app(kit)
            _serve_wsgi(app, sock, stop)
    finally:
        sock.close()
        # The grace runs from the signal: the HTTP server's own stop used part of it.
        worker.stop(stop.remaining(settings.shutdown_grace_seconds))
        kit.close()


def _listen(host: str, port: int) -> socket.socket:
    """A TCP socket listening on ``host:port`` (port 0: a free one), for either server.

    :raises ConfigError: the address is taken, or cannot be listened on (one line, exit 2).
    """
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        # As both servers do: a restart may reuse the port of connections still in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
        return sock
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        raise ConfigError(
            f"cannot listen on {host}:{port}: {reason[:1].lower()}{reason[1:]}"
        ) from None


class _StopSignals:
    """SIGTERM and SIGINT ask the server to stop (a repeated signal changes nothing: the
    graceful stop is bounded by SHUTDOWN_GRACE_SECONDS, and SIGKILL still works). The first
    one's time starts the grace."""

    def __init__(self) -> None:
        self.at: float | None = None
        self.callback: Callable[[], None] = lambda: None
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self.handle)

    def mark(self, sig: int) -> None:
        if self.at is None:
            self.at = time.monotonic()
            log.info("stopping", extra={"signal": signal.Signals(sig).name})

    def handle(self, sig: int, frame: object) -> None:
        self.mark(sig)
        self.callback()

    def remaining(self, grace: float) -> float:
        """What is left of ``grace`` seconds counted from the first signal."""
        return grace if self.at is None else max(0.0, grace - (time.monotonic() - self.at))


def _serve_asgi(app: Any, sock: socket.socket, stop: _StopSignals, grace: float) -> None:
    import uvicorn

    class Server(uvicorn.Server):
        # Uvicorn handles the signals while it serves and re-raises them once it has shut
        # down, into convkit's handler (installed first), so the process lives on for the
        # graceful stop. Its handler notes when the stop began.
        def handle_exit(self, sig: int, frame: Any) -> None:
            stop.mark(sig)
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=max(1, int(grace)),
    )
    server = Server(config)

    def exit_server() -> None:
        server.should_exit = True

    stop.callback = exit_server
    if stop.at is not None:  # a signal came during start-up
        exit_server()
    server.run(sockets=[sock])


def _serve_wsgi(app: Any, sock: socket.socket, stop: _StopSignals) -> None:
    import socketserver
    import threading
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

    class Server(socketserver.ThreadingMixIn, WSGIServer):
        daemon_threads = True

        def server_bind(self) -> None:
            # Adopt the socket _listen bound, then what HTTPServer and WSGIServer derive from
            # the address (SERVER_NAME, SERVER_PORT).
            self.socket.close()
            self.socket = sock
            self.server_address = sock.getsockname()
            self.server_name = str(self.server_address[0])
            self.server_port = int(self.server_address[1])
            self.setup_environ()

        def server_activate(self) -> None:
            pass  # _listen's socket listens already

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            log.debug(format, *args)

    httpd = Server(sock.getsockname()[:2], QuietHandler)
    httpd.set_app(app)

    def shutdown() -> None:
        # From a thread: shutdown() waits for serve_forever, which runs in this (main) thread.
        threading.Thread(target=httpd.shutdown, daemon=True).start()

    stop.callback = shutdown
    if stop.at is not None:  # a signal came during start-up
        shutdown()
    try:
        httpd.serve_forever()
    finally:
        httpd.server_close()


@main.command()
@click.option(
    "--queues",
    default=None,
    help="Celery only: comma-separated Celery queues to consume "
    "(default: CELERY_QUEUE_CONVERT and CELERY_QUEUE_RENDER).",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=None,
    help="Celery only: jobs at once (default: the LibreOffice pool size).",
)
@click.option(
    "--pool",
    type=click.Choice(["threads", "solo"]),
    default=None,
    help="Celery only: the worker pool (default: threads, sharing one LibreOffice pool).",
)
def worker(queues: str | None, concurrency: int | None, pool: str | None) -> None:
    """Run jobs from the queue until SIGTERM or SIGINT, then stop gracefully and exit 0 (for
    separate worker processes). With HEALTH_PORT, serves /health and /ready on that port.

    With CONVKIT_QUEUE=celery this is a Celery worker, plus convkit's sweeper.
    """
    from convkit.health import start_health_server
    from convkit.logs import configure_logging
    from convkit.service import ConvKit
    from convkit.tempdirs import remove_orphans
    from convkit.worker import Worker

    configure_logging()
    settings = _wait_for_database(_settings())
    celery_options = (queues, concurrency, pool)
    kit = ConvKit.from_settings(settings, migrate=True)
    remove_orphans()
    health = start_health_server(kit)
    try:
        if kit.queue.consumes_in_process:
            if any(o is not None for o in celery_options):
                raise click.UsageError(
                    "--queues, --concurrency and --pool need CONVKIT_QUEUE=celery"
                )
            Worker(kit).run_forever()
        else:
            # The queue's own consumer program (Celery's worker) runs in this process.
            names = [q.strip() for q in (queues or "").split(",") if q.strip()]
            code = kit.queue.run_worker(kit, queues=names, concurrency=concurrency or 0, pool=pool)
            if code:
                sys.exit(code)
    finally:
        if health is not None:
            health.stop()
        kit.close()


def _parse_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--option")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


@main.command()
@click.argument("template", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--data", "data_file", type=click.File("rb"), help="JSON data file ('-': stdin).")
@click.option("--locale", default=None)
@click.option("--to", "to", default=None, help="Output format (default: OUT's suffix).")
@click.option("--option", "options", multiple=True, help="KEY=VALUE, VALUE parsed as JSON.")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Output file ('-': stdout).",
)
def render(
    template: Path,
    data_file: Any,
    locale: str | None,
    to: str | None,
    options: tuple[str, ...],
    output: Path,
) -> None:
    """Render TEMPLATE with JSON data into a document (no server, no database)."""
    from convkit.embed import render as render_document

    data: Any = {}
    if data_file is not None:
        try:
            data = json.load(data_file)
        except ValueError as exc:
            raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--data") from None
    if to is None and str(output) != "-" and output.suffix:
        to = output.suffix
    content = render_document(
        template, data, to=to, locale=locale, options=_parse_options(options), settings=_settings()
    )
    _write_output(output, content)


def _write_output(output: Path, content: bytes) -> None:
    if str(output) == "-":
        sys.stdout.buffer.write(content)
        return
    # Write next to the target and rename, so a failed run never leaves half a file.
    tmp = output.with_name(f".{output.name}.tmp")
    tmp.write_bytes(content)
    tmp.replace(output)
    click.echo(f"wrote {output} ({len(content)} bytes)", err=True)


@main.command()
@click.argument("document", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Output file ('-': stdout).",
)
@click.option("--to", "to", default=None, help="Output format (default: OUT's suffix).")
@click.option(
    "--from", "source_format", default=None, help="Input format (default: DOCUMENT's suffix)."
)
@click.option("--locale", default=None)
@click.option("--option", "options", multiple=True, help="KEY=VALUE, VALUE parsed as JSON.")
def convert(
    document: Path,
    output: Path,
    to: str | None,
    source_format: str | None,
    locale: str | None,
    options: tuple[str, ...],
) -> None:
    """Convert DOCUMENT to another format with LibreOffice (no server, no database)."""
    from convkit.embed import convert as convert_document

    if to is None:
        if str(output) == "-" or not output.suffix:
            raise click.UsageError("give --to, or an output file name with a suffix")
        to = output.suffix
    content = convert_document(
        document,
        to,
        options=_parse_options(options),
        locale=locale,
        source_format=source_format,
        settings=_settings(),
    )
    _write_output(output, content)


@main.command()
def cleanup() -> None:
    """Delete artifacts and rows older than FILE_TTL_HOURS (run it from cron)."""
    from convkit.service import ConvKit

    kit = ConvKit.from_settings(_settings(), migrate=True)
    try:
        count = kit.cleanup()
    finally:
        kit.close()
    click.echo(f"deleted {count} expired job(s)")


@main.group()
def jobs() -> None:
    """Inspect and requeue jobs (operators: every tenant's jobs)."""


@jobs.command("list")
@click.option(
    "--status",
    type=click.Choice(["queued", "running", "succeeded", "failed"]),
    help="Only jobs in this state.",
)
@click.option("--tenant", default=None, help="Only this tenant's jobs (default: every tenant).")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 200))
@click.option("--cursor", default=None, help="The next page, as printed after the last one.")
def list_jobs(status: str | None, tenant: str | None, limit: int, cursor: str | None) -> None:
    """Print jobs newest first: id, status, tenant, template -> format, attempts, error."""
    from convkit.job import JobState
    from convkit.service import ConvKit

    kit = ConvKit.from_settings(_settings(), migrate=True)
    try:
        page = kit.list(
            None if tenant is None else Tenant(tenant),
            status=None if status is None else JobState(status),
            limit=limit,
            cursor=cursor,
        )
    finally:
        kit.close()
    for job in page.jobs:
        error = f"  {job.error.code}: {job.error.message}" if job.error else ""
        click.echo(
            f"{job.id}  {job.status.value:<9}  {job.tenant}  "
            f"{job.template or '(upload)'} -> {job.format}  attempts={job.attempts}{error}"
        )
    if page.next_cursor:
        click.echo(f"more: --cursor {page.next_cursor}", err=True)


@jobs.command("retry")
@click.argument("job_id")
def retry_job(job_id: str) -> None:
    """Put the failed job JOB_ID back in the queue with fresh attempts (any tenant's)."""
    from convkit.service import ConvKit

    kit = ConvKit.from_settings(_settings(), migrate=True)
    try:
        job = kit.retry_job(None, job_id)
    finally:
        kit.close()
    click.echo(f"{job.id} queued again (tenant {job.tenant})")


@main.command()
def migrate() -> None:
    """Create or upgrade the job database schema (DATABASE_URL)."""
    from convkit.service import open_job_store

    store = open_job_store(_wait_for_database(_settings()))
    try:
        store.migrate()
    finally:
        store.close()
    click.echo("database is up to date")


@main.command()
def doctor() -> None:
    """Print what convkit sees: settings, templates, the readiness checks, then every plugin's
    checks (LibreOffice, fonts, the pool's health); exit 1 when a readiness check fails."""
    from convkit._version import __version__
    from convkit.plugins import get_plugin_manager
    from convkit.service import ConvKit

    settings = _settings()
    # Bound before anything can fail, so a broken set-up still shows what convkit read.
    settings = settings.with_plugin_settings(get_plugin_manager(settings.plugins))
    click.echo(f"convkit {__version__}, Python {sys.version.split()[0]}")
    click.echo("settings:")
    for name, shown in settings.report():
        click.echo(f"  {name}: {shown}")
    kit = ConvKit.from_settings(settings, migrate=True)
    try:
        checks = kit.doctor_checks()
        click.echo(f"templates: {', '.join(kit.templates.names()) or '(none)'}")
        failing = False
        for check in checks:
            healthy, detail = check.result()
            failing |= check.readiness and not healthy
            click.echo(f"{check.name}: {detail}")
    finally:
        kit.close()
    if failing:
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
