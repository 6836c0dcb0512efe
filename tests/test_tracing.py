"""OpenTelemetry: the submit request's ``traceparent`` is stored with the job and the worker's
spans (claim, render, convert, store) continue that trace; recorded with the SDK's in-memory
exporter. Without a configured tracer provider nothing is installed."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from opentelemetry.util._once import Once

from convkit import ConvKit, hookimpl
from convkit.backends.observability import tracing
from convkit.ports import Converter
from convkit.testing.http import ALICE_KEY, HttpClient, auth

ClientFactory = Callable[..., HttpClient]

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@hookimpl
def register_converters() -> list[Converter]:
    """This module is also a plugin: txt -> upper, so a job has a convert step."""
    from tests.test_service import FlakyConverter

    return [FlakyConverter()]


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """A configured global tracer provider exporting to memory, for this test only (the
    global is set-once by design; it is put back afterwards)."""
    monkeypatch.setattr(trace, "_TRACER_PROVIDER_SET_ONCE", Once())
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    yield exporter
    provider.shutdown()


@pytest.fixture
def traced_kit(spans: InMemorySpanExporter, kit_factory: Callable[..., ConvKit]) -> ConvKit:
    return kit_factory(plugins=("tests.test_tracing",))


def _by_name(exported: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    found = {span.name: span for span in exported}
    assert len(found) == len(exported), [s.name for s in exported]
    return found


def _submit(client: HttpClient, body: dict[str, object], **headers: str) -> str:
    r = client.post(client.url("/jobs"), headers={**auth(ALICE_KEY), **headers}, json=body)
    assert r.status == 202, r.body
    return str(r.json()["id"])


def test_worker_spans_continue_the_submit_trace(
    framework: str,
    traced_kit: ConvKit,
    client_factory: ClientFactory,
    spans: InMemorySpanExporter,
) -> None:
    """The job's attempt is a child of the submit request's span; claim, render, convert and
    store are children of the attempt, all in the submit request's trace."""
    client = client_factory(framework, traced_kit)
    body = {"template": "greeting", "format": "upper", "data": {"name": "Ada"}}
    job_id = _submit(client, body, traceparent=TRACEPARENT)
    done = traced_kit.run_job(job_id)
    assert done is not None and done.result is not None
    exported = spans.get_finished_spans()
    found = _by_name(tuple(s for s in exported if s.name.startswith("convkit.")))
    # A server that makes its own spans for the request (FastAPI does, when OpenTelemetry is
    # configured) is the job's parent, the span active when the job was accepted; else the
    # client's span that the request's header names is.
    server_spans = {
        format(s.context.span_id, "016x") for s in exported if not s.name.startswith("convkit.")
    }
    assert done.traceparent is not None
    version, trace_id, parent_id, flags = done.traceparent.split("-")
    assert (version, trace_id, flags) == ("00", TRACE_ID, "01")
    assert parent_id in server_spans if server_spans else parent_id == PARENT_ID
    job = found["convkit.job"]
    assert job.parent is not None and job.parent.is_remote
    assert format(job.parent.span_id, "016x") == parent_id
    assert job.attributes is not None and job.attributes["convkit.job_id"] == job_id
    assert job.status.status_code is StatusCode.UNSET
    for name in ("claim", "render", "convert", "store"):
        step = found[f"convkit.{name}"]
        assert step.parent is not None and step.parent.span_id == job.context.span_id
        assert step.start_time is not None and job.start_time is not None
        assert job.start_time <= step.start_time
    for span in exported:
        assert format(span.context.trace_id, "032x") == TRACE_ID
    steps = sorted(
        (found[f"convkit.{n}"] for n in ("claim", "render", "convert", "store")),
        key=lambda s: s.start_time or 0,
    )
    assert [s.name for s in steps] == [
        "convkit.claim",
        "convkit.render",
        "convkit.convert",
        "convkit.store",
    ]


def test_a_job_without_traceparent_starts_its_own_trace(
    traced_kit: ConvKit, client_factory: ClientFactory, spans: InMemorySpanExporter
) -> None:
    """No (or a malformed) traceparent: nothing stored, the attempt is a root span."""
    client = client_factory("flask", traced_kit)
    body = {"template": "greeting", "format": "txt", "data": {"name": "Ada"}}
    for header in (
        {},
        {"traceparent": "00-zz-not-a-trace-01"},
        {"traceparent": f"ff-{TRACE_ID}-{PARENT_ID}-01"},
    ):
        spans.clear()
        job_id = _submit(client, body, **header)
        assert traced_kit.store.get(job_id).traceparent is None  # type: ignore[union-attr]
        traced_kit.run_job(job_id)
        found = _by_name(spans.get_finished_spans())
        assert set(found) == {"convkit.job", "convkit.claim", "convkit.render", "convkit.store"}
        assert found["convkit.job"].parent is None


def test_a_failed_attempt_is_an_error_span(
    traced_kit: ConvKit, client_factory: ClientFactory, spans: InMemorySpanExporter
) -> None:
    client = client_factory("django", traced_kit)
    job_id = _submit(client, {"template": "boom", "format": "txt"}, traceparent=TRACEPARENT)
    traced_kit.run_job(job_id)
    job = _by_name(spans.get_finished_spans())["convkit.job"]
    assert job.status.status_code is StatusCode.ERROR
    assert job.attributes is not None and job.attributes["convkit.error_code"] == "template_error"


def test_without_a_tracer_provider_nothing_is_installed(
    kit_factory: Callable[..., ConvKit],
) -> None:
    """OpenTelemetry importable but unconfigured (the default): no tracing plugin, no spans."""
    assert tracing.configured_provider() is None
    kit = kit_factory()
    assert kit.pm.get_plugin(tracing.PLUGIN_NAME) is None


def test_with_a_tracer_provider_each_kit_gets_its_tracer(
    spans: InMemorySpanExporter, kit_factory: Callable[..., ConvKit]
) -> None:
    first, second = kit_factory(), kit_factory()
    plugins = [k.pm.get_plugin(tracing.PLUGIN_NAME) for k in (first, second)]
    assert all(isinstance(p, tracing.KitTracing) for p in plugins)
    assert plugins[0] is not plugins[1]


class FixedTrace:
    """A tracing plugin whose active span is always the same one."""

    @hookimpl
    def current_traceparent(self) -> str | None:
        return f"00-{TRACE_ID}-{'1' * 16}-01"


def test_hook_current_traceparent(
    kit: ConvKit, client_factory: ClientFactory, framework: str
) -> None:
    """A plugin's answer (the server's active span) is stored instead of the request's
    header."""
    client = client_factory(framework, kit)
    body = {"template": "greeting", "format": "txt"}
    kit.pm.register(FixedTrace())
    job_id = _submit(client, body, traceparent=TRACEPARENT)
    assert kit.store.get(job_id).traceparent == f"00-{TRACE_ID}-{'1' * 16}-01"  # type: ignore[union-attr]
