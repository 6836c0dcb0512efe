"""The `convkit` command and the one-call `convkit.render` API."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import convkit
from convkit.cli import main
from convkit.errors import TemplateError, TemplateNotFound, ValidationError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "templates"


@pytest.fixture
def greeting(tmp_path: Path) -> Path:
    path = tmp_path / "greeting.txt"
    path.write_text("Hello {{ name }}!")
    return path


class TestRenderApi:
    def test_render_in_the_template_format(self, greeting: Path) -> None:
        """Without `to`, the document comes back in the template's own format."""
        assert convkit.render(greeting, {"name": "Ada"}) == b"Hello Ada!"

    @pytest.mark.libreoffice
    def test_render_converts_to_pdf(self) -> None:
        """The example invoice renders to a PDF naming the customer and the total."""
        import io

        from pypdf import PdfReader

        data = json.loads((EXAMPLES / "invoice.json").read_text())
        pdf = convkit.render(EXAMPLES / "invoice.html", data, to="pdf")
        text = PdfReader(io.BytesIO(pdf)).pages[0].extract_text()
        assert "Ada Lovelace Ltd." in text
        assert "2654.59" in text

    def test_errors_are_convkit_errors(self, tmp_path: Path, greeting: Path) -> None:
        """A missing file, an unknown suffix, a bad target and a template bug raise clearly."""
        with pytest.raises(TemplateNotFound):
            convkit.render(tmp_path / "nope.html", {})
        odd = tmp_path / "x.unknown"
        odd.write_text("x")
        with pytest.raises(ValidationError, match="no template engine"):
            convkit.render(odd, {})
        with pytest.raises(ValidationError, match="cannot convert"):
            convkit.render(greeting, {}, to="mp3")
        broken = tmp_path / "broken.txt"
        broken.write_text("{% if %}")
        with pytest.raises(TemplateError):
            convkit.render(broken, {})


class TestCli:
    def test_render_to_file(self, tmp_path: Path, greeting: Path) -> None:
        """`convkit render` writes the document; the format comes from the output suffix."""
        data = tmp_path / "data.json"
        data.write_text('{"name": "Grace"}')
        out = tmp_path / "out.txt"
        result = CliRunner().invoke(
            main, ["render", str(greeting), "--data", str(data), "-o", str(out)]
        )
        assert result.exit_code == 0, result.output
        assert out.read_bytes() == b"Hello Grace!"

    def test_render_error_is_one_line(self, tmp_path: Path, greeting: Path) -> None:
        """A convkit error exits 2 with one line, never a traceback, and writes no file."""
        out = tmp_path / "out.mp3"
        result = CliRunner().invoke(main, ["render", str(greeting), "-o", str(out)])
        assert result.exit_code == 2
        assert result.output.startswith("convkit: error: cannot convert")
        assert "Traceback" not in result.output
        assert not out.exists()

    def test_bad_setting_names_the_variable(self, tmp_path: Path) -> None:
        """A bad environment value stops the command with a line naming the variable."""
        result = CliRunner().invoke(main, ["cleanup"], env={"FILE_TTL_HOURS": "soon"})
        assert result.exit_code == 2
        assert "FILE_TTL_HOURS" in result.output

    def test_migrate_then_cleanup(self, tmp_path: Path) -> None:
        """`migrate` creates the schema; `cleanup` then runs on the empty database."""
        env = {
            "DATABASE_URL": f"sqlite:///{tmp_path / 'jobs.db'}",
            "STORAGE_URL": str(tmp_path / "storage"),
            "TEMPLATES_DIR": str(tmp_path),
        }
        runner = CliRunner()
        migrated = runner.invoke(main, ["migrate"], env=env)
        assert migrated.exit_code == 0, migrated.output
        assert (tmp_path / "jobs.db").exists()
        cleaned = runner.invoke(main, ["cleanup"], env=env)
        assert cleaned.exit_code == 0, cleaned.output
        assert "deleted 0 expired job(s)" in cleaned.output

    @pytest.mark.libreoffice
    def test_doctor_lists_every_setting(self, tmp_path: Path) -> None:
        """`doctor` prints each declared setting, plugins' included, with secrets masked, and
        its sections in the order of cli.md's example."""
        env = {
            "DATABASE_URL": f"sqlite:///{tmp_path / 'jobs.db'}",
            "STORAGE_URL": str(tmp_path / "storage"),
            "TEMPLATES_DIR": str(tmp_path),
            "API_KEY": "hunter2-key",
            "CONVKIT_PLUGINS": "tests.settings_plugin",
            "REPEAT_TIMES": "4",
            "REPEAT_TOKEN": "hunter2-token",
        }
        result = CliRunner().invoke(main, ["doctor"], env=env)
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        assert "settings:" in lines
        assert "  API_KEY: (set, hidden)" in lines
        assert "  WORKER_THREADS: 2 (default)" in lines
        assert "  REPEAT_TIMES: 4 (plugin tests.settings_plugin)" in lines
        assert "  REPEAT_TOKEN: (set, hidden) (plugin tests.settings_plugin)" in lines
        assert "hunter2" not in result.output
        assert _labels(lines) == _labels(_documented_doctor_output())

    def test_doctor_stops_on_a_bad_plugin_setting(self) -> None:
        """A plugin's bad value stops `doctor` with the one-line error, before any check."""
        env = {"CONVKIT_PLUGINS": "tests.settings_plugin", "REPEAT_TIMES": "lots"}
        result = CliRunner().invoke(main, ["doctor"], env=env)
        assert result.exit_code == 2
        assert result.output == (
            "convkit: error: REPEAT_TIMES must be a whole number >= 1, not 'lots'\n"
        )

    @pytest.mark.slow
    def test_serve_without_key_generates_one(self, tmp_path: Path) -> None:
        """`serve` with no API_KEY prints a generated key once and requires it."""
        import urllib.error
        import urllib.request

        from tests.test_restart import _free_port

        port = _free_port()
        env = {k: v for k, v in os.environ.items() if k not in ("API_KEY", "API_KEYS")}
        env.update(
            DATABASE_URL=f"sqlite:///{tmp_path / 'jobs.db'}",
            STORAGE_URL=str(tmp_path / "storage"),
            TEMPLATES_DIR=str(tmp_path),
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "convkit.cli", "serve", "--port", str(port)],
            env=env,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            cwd=tmp_path,
        )
        try:
            assert proc.stderr is not None
            line = proc.stderr.readline()
            assert "generated one for this run: " in line
            key = line.rsplit(" ", 1)[1].strip()
            url = f"http://127.0.0.1:{port}/api/v1/templates"
            deadline = time.monotonic() + 60
            status = None
            while status is None:
                try:
                    urllib.request.urlopen(url, timeout=5)  # our own server
                    status = 200
                except urllib.error.HTTPError as exc:
                    status = exc.code
                except urllib.error.URLError:
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
            assert status == 401
            req = urllib.request.Request(url, headers={"X-API-Key": key})
            with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310
                assert json.loads(resp.read()) == {"templates": []}
        finally:
            proc.terminate()
            proc.wait(30)
            if proc.stderr:
                proc.stderr.close()


def _documented_doctor_output() -> list[str]:
    """The lines of the example output in cli.md's `convkit doctor` section."""
    text = (EXAMPLES.parent.parent / "docs" / "cli.md").read_text(encoding="utf-8")
    section = text.split("## convkit doctor", 1)[1]
    example = re.search(r"^```text\n(.*?)^```$", section, re.MULTILINE | re.DOTALL)
    assert example is not None
    return example.group(1).splitlines()


def _labels(lines: list[str]) -> list[str]:
    """What each top-level line of `doctor` output is about: ``convkit`` for the versions,
    else the text before its colon (settings, indented, left out)."""
    return [
        line.split(" " if i == 0 else ":")[0] for i, line in enumerate(lines) if line[:1] != " "
    ]


def _serve_env(tmp_path: Path) -> dict[str, str]:
    """A `serve` on SQLite and a local folder that runs no jobs (no LibreOffice to start)."""
    return {
        **os.environ,
        "API_KEY": "serve-test-key",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'jobs.db'}",
        "STORAGE_URL": str(tmp_path / "storage"),
        "TEMPLATES_DIR": str(tmp_path),
        "WORKER_THREADS": "0",
    }


FRAMEWORK_NAMES = ["fastapi", "flask", "django"]


@pytest.mark.slow
@pytest.mark.parametrize("framework", FRAMEWORK_NAMES)
def test_serve_stops_on_sigint_even_when_started_ignoring_it(
    framework: str, tmp_path: Path
) -> None:
    """A non-interactive shell starts background jobs with SIGINT ignored; `serve` installs
    its own handler, so `kill -INT` stops every framework like SIGTERM does (exit 0)."""
    import signal
    import urllib.request

    # `trap "" INT` then exec: what `convkit serve &` in a script does to the server.
    command = ["sh", "-c", 'trap "" INT; exec "$0" "$@"', sys.executable, "-m", "convkit.cli"]
    proc = subprocess.Popen(
        [*command, "serve", "--framework", framework, "--port", "0"],
        env=_serve_env(tmp_path),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        cwd=tmp_path,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert line.startswith(f"convkit: serving {framework} on http://127.0.0.1:"), line
        url = line.split(" on ", 1)[1].strip() + "/health"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310  # our server
                    assert resp.status == 200
                break
            except OSError:
                assert time.monotonic() < deadline, f"{url} never answered"
                time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0  # a bound for slow machines, not a measurement
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.mark.parametrize("framework", FRAMEWORK_NAMES)
def test_serve_on_a_busy_port_is_a_one_line_error(framework: str, tmp_path: Path) -> None:
    """cli.md: errors are one line with exit status 2. A taken port is refused before
    anything starts: no "serving" line, no traceback."""
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        command = [sys.executable, "-m", "convkit.cli", "serve", "--framework", framework]
        out = subprocess.run(
            [*command, "--port", str(port)],
            env=_serve_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
    cli_md = (EXAMPLES.parent.parent / "docs" / "cli.md").read_text(encoding="utf-8")
    quoted = "convkit: error: cannot listen on HOST:PORT: address already in use"
    assert f"`{quoted}`" in cli_md
    assert out.returncode == 2
    assert out.stderr == quoted.replace("HOST:PORT", f"127.0.0.1:{port}") + "\n"
    assert out.stdout == ""
