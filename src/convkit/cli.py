"""The ``convkit`` command: serve | worker | render | cleanup | migrate | doctor."""

from __future__ import annotations

import json
import logging
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import click

from convkit.errors import ConvKitError, ServiceUnavailable
from convkit.settings import Settings

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

    Without API_KEY or API_KEYS, a random key is generated and printed once.
    """
    import attrs

    from convkit.logs import configure_logging
    from convkit.service import ConvKit
    from convkit.settings import Tenant
    from convkit.worker import Worker

    configure_logging()
    settings = _wait_for_database(_settings())
    if not settings.api_keys:
        key = secrets.token_urlsafe(24)
        settings = attrs.evolve(settings, api_keys={key: Tenant("default")})
        click.echo(f"convkit: no API_KEY set; generated one for this run: {key}", err=True)
    kit = ConvKit.from_settings(settings, migrate=True)
    worker = Worker(kit)
    if settings.queue == "inline" and settings.worker_threads > 0:
        worker.start()
    click.echo(f"convkit: serving {framework} on http://{host}:{port}/api/v1", err=True)
    try:
        if framework == "fastapi":
            import uvicorn

            from convkit.adapters.fastapi import create_app

            uvicorn.run(create_app(kit), host=host, port=port, log_config=None, access_log=False)
        else:
            app: Any
            if framework == "flask":
                from convkit.adapters.flask import create_app as create_flask

                app = create_flask(kit)
            else:
                from convkit.adapters.django import create_wsgi_app

                app = create_wsgi_app(kit)
            _serve_wsgi(app, host, port)
    finally:
        worker.stop()
        kit.close()


def _serve_wsgi(app: Any, host: str, port: int) -> None:
    import signal
    import socketserver
    import threading
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    class Server(socketserver.ThreadingMixIn, WSGIServer):
        daemon_threads = True

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            log.debug(format, *args)

    httpd = make_server(host, port, app, server_class=Server, handler_class=QuietHandler)

    def shutdown(*_: object) -> None:
        threading.Thread(target=httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, shutdown)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
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
    """Run jobs from the queue until SIGTERM (for separate worker processes).

    With CONVKIT_QUEUE=celery this is a Celery worker, plus convkit's sweeper.
    """
    from convkit.logs import configure_logging
    from convkit.service import ConvKit
    from convkit.worker import Worker

    configure_logging()
    settings = _wait_for_database(_settings())
    celery_options = (queues, concurrency, pool)
    kit = ConvKit.from_settings(settings, migrate=True)
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
    """Print what convkit sees: settings, every plugin's checks (LibreOffice, fonts, the pool's
    health), templates and readiness; exit 1 when a readiness check fails."""
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
