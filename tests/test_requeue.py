"""Requeueing failed jobs beyond the HTTP contract: the operators' `convkit jobs list|retry`
over every tenant, and a retry refused while the queue is down."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from click.testing import CliRunner, Result

from convkit.cli import main
from convkit.errors import ServiceUnavailable
from convkit.job import Job, JobSpec, JobState
from convkit.service import ConvKit
from convkit.testing.http import ALICE_KEY, BOB_KEY


def _run(kit: ConvKit, key: str, template: str) -> Job:
    """Submit ``template`` as ``key`` and run it once in this thread; the job afterwards."""
    job, _ = kit.submit(kit.settings.api_keys[key], JobSpec(template, "txt", data={"name": "x"}))
    kit.run_job(job.id)
    done = kit.store.get(job.id)
    assert done is not None
    return done


def _cli(kit: ConvKit, *args: str) -> Result:
    env = {
        "DATABASE_URL": kit.settings.database_url,
        "STORAGE_URL": kit.settings.storage_url,
        "TEMPLATES_DIR": kit.settings.templates_dir,
    }
    return CliRunner().invoke(main, ["jobs", *args], env=env)


def _listed_ids(result: Result) -> list[str]:
    assert result.exit_code == 0, result.output
    return [line.split()[0] for line in result.stdout.splitlines()]


def test_jobs_list_shows_every_tenant_and_filters(kit_factory: Callable[..., ConvKit]) -> None:
    """`convkit jobs list`: every tenant's jobs newest first, one a line with status, tenant,
    template, attempts and last error; --status and --tenant narrow it; --limit pages."""
    kit = kit_factory()
    first_failed = _run(kit, ALICE_KEY, "boom")
    done = _run(kit, ALICE_KEY, "greeting")
    bobs = _run(kit, BOB_KEY, "greeting")
    last_failed = _run(kit, ALICE_KEY, "boom")
    assert [j.status for j in (first_failed, done, bobs, last_failed)] == [
        JobState.FAILED,
        JobState.SUCCEEDED,
        JobState.SUCCEEDED,
        JobState.FAILED,
    ]

    everything = _cli(kit, "list")
    assert _listed_ids(everything) == [last_failed.id, bobs.id, done.id, first_failed.id]
    failed = _cli(kit, "list", "--status", "failed")
    assert _listed_ids(failed) == [last_failed.id, first_failed.id]
    line = failed.stdout.splitlines()[0]
    assert line.split()[1:3] == ["failed", "alice"]
    assert "boom -> txt  attempts=1  template_error: " in line
    assert _listed_ids(_cli(kit, "list", "--tenant", "bob")) == [bobs.id]

    page = _cli(kit, "list", "--status", "failed", "--limit", "1")
    assert _listed_ids(page) == [last_failed.id]
    cursor = page.stderr.strip().removeprefix("more: --cursor ")
    rest = _cli(kit, "list", "--status", "failed", "--limit", "1", "--cursor", cursor)
    assert _listed_ids(rest) == [first_failed.id]
    assert rest.stderr == ""


def test_jobs_retry_requeues_any_tenants_failed_job(kit_factory: Callable[..., ConvKit]) -> None:
    """`convkit jobs retry ID` puts a failed job of any tenant back with fresh attempts; a job
    that is not failed, or no job, is one error line and exit status 2, nothing changed."""
    kit = kit_factory()
    failed = _run(kit, ALICE_KEY, "boom")
    assert failed.status is JobState.FAILED

    result = _cli(kit, "retry", failed.id)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{failed.id} queued again (tenant alice)\n"
    retried = kit.store.get(failed.id)
    assert retried is not None
    assert (retried.status, retried.attempts, retried.error) == (
        JobState.QUEUED,
        0,
        failed.error,
    )

    again = _cli(kit, "retry", failed.id)  # queued now
    assert again.exit_code == 2
    assert again.stderr.startswith("convkit: error: ")
    assert "only a failed job can be retried" in again.stderr
    missing = _cli(kit, "retry", "00000000-0000-0000-0000-000000000000")
    assert missing.exit_code == 2 and "no job" in missing.stderr
    assert kit.store.get(failed.id) == retried


def test_retry_while_the_queue_is_down_changes_nothing(
    kit_factory: Callable[..., ConvKit],
) -> None:
    """A retry while the queue cannot take the job: 503 (ServiceUnavailable), the job stays
    failed, so the client can simply retry the retry."""
    kit = kit_factory()
    failed = _run(kit, ALICE_KEY, "boom")
    kit.queue.stop(0)  # a stopped queue refuses work, as a broker that is down does
    with pytest.raises(ServiceUnavailable):
        kit.retry_job(kit.settings.api_keys[ALICE_KEY], failed.id)
    assert kit.store.get(failed.id) == failed
