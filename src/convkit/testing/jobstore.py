"""The contract every :class:`convkit.ports.JobStore` must honour, as a reusable test suite.

Subclass :class:`JobStoreContract` in a test module (name the subclass ``Test...``) and provide
a fixture ``job_store_factory``: a callable taking a :class:`convkit.testing.FakeClock` and
returning a fresh, migrated, empty store that uses it as ``clock``. The fixture owns cleanup
(closing stores, dropping data) in its teardown::

    class TestMyJobStore(JobStoreContract):
        @pytest.fixture
        def job_store_factory(self, tmp_path):
            stores = []
            def make(clock):
                store = MyJobStore(tmp_path / "db", clock=clock)
                stores.append(store)
                return store
            yield make
            for store in stores:
                store.close()
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TypeVar

import attrs
import pytest

from convkit.errors import ValidationError
from convkit.job import Job, JobError, JobResult, JobSource, JobSpec, JobState, new_job_id
from convkit.ports import JobStore
from convkit.testing.clock import FakeClock

__all__ = ["JobStoreContract", "JobStoreFactory", "make_job"]

#: What the ``job_store_factory`` fixture returns.
JobStoreFactory = Callable[[FakeClock], JobStore]

T = TypeVar("T")

LEASE_S = 30.0


def make_job(clock: FakeClock, *, tenant: str = "acme", **changes: Any) -> Job:
    """A queued job created now by ``clock``; ``changes`` override any :class:`Job` field."""
    job = Job(
        id=new_job_id(),
        tenant=tenant,
        spec=JobSpec("invoice.html", "pdf", data={"n": 1}),
        status=JobState.QUEUED,
        created_at=clock(),
    )
    return attrs.evolve(job, **changes)


def _race(threads: int, fn: Callable[[int], T]) -> list[T]:
    """Run ``fn(i)`` in ``threads`` threads released together by a barrier; exceptions propagate."""
    barrier = threading.Barrier(threads)

    def run(i: int) -> T:
        barrier.wait(timeout=30)
        return fn(i)

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(run, range(threads)))


def _claim_race(store: JobStore, job_id: str, threads: int = 8) -> list[Job | None]:
    """``threads`` workers claiming ``job_id`` at the same moment."""

    def attempt(_: int) -> Job | None:
        return store.claim(job_id, lease_s=LEASE_S)

    return _race(threads, attempt)


class JobStoreContract:
    """Behaviour every job store shares; needs the ``job_store_factory`` fixture."""

    @pytest.fixture
    def clock(self) -> FakeClock:
        """The store's clock; tests move it with ``clock.advance(seconds)``."""
        return FakeClock()

    @pytest.fixture
    def store(self, job_store_factory: JobStoreFactory, clock: FakeClock) -> JobStore:
        """A fresh, empty store on ``clock``."""
        return job_store_factory(clock)

    def _claimed(self, store: JobStore, clock: FakeClock, **changes: Any) -> Job:
        job, _ = store.create(make_job(clock, **changes))
        claimed = store.claim(job.id, lease_s=LEASE_S)
        assert claimed is not None
        return claimed

    # ---------------------------------------------------------------------------------------
    # create / get

    def test_upload_job_round_trip(self, store: JobStore, clock: FakeClock) -> None:
        """An upload conversion job (no template, a source document) round-trips intact."""
        spec = JobSpec(
            template=None,
            format="pdf",
            options={"pdfa": "2b"},
            source=JobSource(key="acme/j/source.docx", format="docx", filename="Report 1.docx"),
        )
        job, created = store.create(make_job(clock, spec=spec))
        assert created
        got = store.get(job.id)
        assert got == job
        assert got is not None and got.template is None and got.spec.source == spec.source

    def test_create_returns_the_job_and_true(self, store: JobStore, clock: FakeClock) -> None:
        """A new job is inserted and handed back unchanged with ``created=True``."""
        job = make_job(clock)
        assert store.create(job) == (job, True)

    def test_get_round_trips_every_field(self, store: JobStore, clock: FakeClock) -> None:
        """Every field written by ``create`` reads back equal, including nested values."""
        now = clock()
        job = make_job(
            clock,
            spec=JobSpec(
                "letters/welcome.docx",
                "pdf",
                data={"name": "Zoë", "items": [{"qty": 2, "price": 9.5}], "ok": True, "x": None},
                locale="de-CH",
                options={"landscape": True, "margins": [10, 20]},
            ),
            status=JobState.FAILED,
            attempts=2,
            max_attempts=5,
            started_at=now + timedelta(seconds=1, microseconds=123456),
            finished_at=now + timedelta(seconds=2),
            lease_expires_at=now + timedelta(seconds=31),
            error=JobError("conversion_failed", "soffice exited with 81"),
            result=JobResult("acme/abc/welcome.pdf", "welcome.pdf", "application/pdf", 12345),
            idempotency_key="order-42",
            request_hash="f" * 64,
            request_id="req-7f3a9c",
            traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        store.create(job)
        assert store.get(job.id) == job

    def test_get_returns_aware_utc_datetimes(self, store: JobStore, clock: FakeClock) -> None:
        """Datetimes come back timezone-aware in UTC, whatever zone they were written in."""
        cet = timezone(timedelta(hours=1))
        job = make_job(clock, created_at=clock().astimezone(cet), started_at=clock())
        store.create(job)
        got = store.get(job.id)
        assert got is not None
        for value in (got.created_at, got.started_at):
            assert value is not None
            assert value.utcoffset() == timedelta(0)
        assert got.created_at == job.created_at

    def test_unicode_data_round_trips(self, store: JobStore, clock: FakeClock) -> None:
        """Non-ASCII text, emoji, escapes and a NUL character survive storage."""
        data = {"名前": "山田 太郎", "emoji": "📄✅", "quote": 'a "b" \\ c', "nul": "a\x00b"}
        job = make_job(clock, spec=JobSpec("t.html", "html", data=data))
        store.create(job)
        got = store.get(job.id)
        assert got is not None
        assert got.spec.data == data

    def test_get_unknown_id_returns_none(self, store: JobStore) -> None:
        """An id that was never stored reads as None."""
        assert store.get(new_job_id()) is None

    def test_get_scoped_to_its_tenant(self, store: JobStore, clock: FakeClock) -> None:
        """With ``tenant`` given, the job's tenant gets it and any other tenant gets None."""
        job = make_job(clock, tenant="acme")
        store.create(job)
        assert store.get(job.id, tenant="acme") == job
        assert store.get(job.id, tenant="globex") is None

    # ---------------------------------------------------------------------------------------
    # idempotency

    def test_same_idempotency_key_returns_existing_job(
        self, store: JobStore, clock: FakeClock
    ) -> None:
        """A second create with the tenant's key stores nothing and returns the first job."""
        first = make_job(clock, idempotency_key="k1", request_hash="h1")
        store.create(first)
        clock.advance(5)
        again, created = store.create(make_job(clock, idempotency_key="k1", request_hash="h2"))
        assert (again, created) == (first, False)
        assert [j.id for j in store.list("acme").jobs] == [first.id]

    def test_same_key_in_two_tenants_creates_two_jobs(
        self, store: JobStore, clock: FakeClock
    ) -> None:
        """Idempotency keys are per tenant: the same key in another tenant is a new job."""
        a, a_created = store.create(make_job(clock, tenant="acme", idempotency_key="k"))
        b, b_created = store.create(make_job(clock, tenant="globex", idempotency_key="k"))
        assert a_created
        assert b_created
        assert a.id != b.id
        assert store.get(b.id, tenant="globex") == b

    def test_jobs_without_key_never_collide(self, store: JobStore, clock: FakeClock) -> None:
        """Jobs without an idempotency key are all created, even with equal requests."""
        results = [store.create(make_job(clock)) for _ in range(3)]
        assert all(created for _, created in results)
        assert len(store.list("acme").jobs) == 3

    def test_concurrent_creates_with_one_key_store_one_row(
        self, store: JobStore, clock: FakeClock
    ) -> None:
        """Threads submitting the same key at once all get the one job that was stored."""
        results = _race(6, lambda _: store.create(make_job(clock, idempotency_key="race")))
        ids = {job.id for job, _ in results}
        assert len(ids) == 1
        assert sum(created for _, created in results) == 1
        assert [j.id for j in store.list("acme").jobs] == list(ids)

    # ---------------------------------------------------------------------------------------
    # list

    def test_list_newest_first(self, store: JobStore, clock: FakeClock) -> None:
        """Jobs are listed by creation time, newest first."""
        ids = []
        for _ in range(3):
            ids.append(store.create(make_job(clock))[0].id)
            clock.advance(1)
        page = store.list("acme")
        assert [j.id for j in page.jobs] == ids[::-1]
        assert page.next_cursor is None

    def test_list_only_shows_the_tenants_jobs(self, store: JobStore, clock: FakeClock) -> None:
        """A tenant never sees another tenant's jobs in its listing."""
        mine, _ = store.create(make_job(clock, tenant="acme"))
        store.create(make_job(clock, tenant="globex"))
        assert store.list("acme").jobs == [mine]
        assert store.list("nobody").jobs == []

    def test_list_filters_by_status(self, store: JobStore, clock: FakeClock) -> None:
        """``status=`` lists only the jobs in that state, still newest first and paginated."""
        failed = []
        for _ in range(3):
            job = self._claimed(store, clock)
            assert store.fail(job.id, 1, JobError("template_error", "boom"))
            failed.append(job.id)
            clock.advance(1)
        queued, _ = store.create(make_job(clock))
        first = store.list("acme", status=JobState.FAILED, limit=2)
        assert [j.id for j in first.jobs] == failed[:0:-1]
        assert first.next_cursor is not None
        rest = store.list("acme", status=JobState.FAILED, limit=2, cursor=first.next_cursor)
        assert [j.id for j in rest.jobs] == [failed[0]]
        assert rest.next_cursor is None
        assert [j.id for j in store.list("acme", status=JobState.QUEUED).jobs] == [queued.id]
        assert store.list("acme", status=JobState.SUCCEEDED).jobs == []

    def test_list_without_tenant_lists_every_tenant(
        self, store: JobStore, clock: FakeClock
    ) -> None:
        """``tenant=None`` (operators) lists every tenant's jobs, newest first."""
        acme, _ = store.create(make_job(clock, tenant="acme"))
        clock.advance(1)
        globex, _ = store.create(make_job(clock, tenant="globex"))
        assert [j.id for j in store.list(None).jobs] == [globex.id, acme.id]
        assert [j.id for j in store.list(None, status=JobState.QUEUED, limit=1).jobs] == [globex.id]

    def test_list_paginates_over_ties_in_created_at(
        self, store: JobStore, clock: FakeClock
    ) -> None:
        """Walking cursors visits every job exactly once, in order, even when many jobs share
        one ``created_at`` across page boundaries."""
        created = []
        for i in range(17):
            if i % 4 == 0:
                clock.advance(1)  # groups of four jobs created at the same instant
            created.append(store.create(make_job(clock))[0])
        expected = [j.id for j in sorted(created, key=lambda j: (j.created_at, j.id), reverse=True)]
        seen: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            page = store.list("acme", limit=5, cursor=cursor)
            assert len(page.jobs) <= 5
            seen.extend(j.id for j in page.jobs)
            pages += 1
            cursor = page.next_cursor
            if cursor is None:
                break
        assert seen == expected
        assert pages == 4

    def test_list_exact_last_page_has_no_cursor(self, store: JobStore, clock: FakeClock) -> None:
        """When the jobs fill the page exactly, there is no next cursor (no empty last page)."""
        for _ in range(4):
            store.create(make_job(clock))
        assert store.list("acme", limit=4).next_cursor is None
        first = store.list("acme", limit=2)
        assert first.next_cursor is not None
        assert store.list("acme", limit=2, cursor=first.next_cursor).next_cursor is None

    def test_list_clamps_limit(self, store: JobStore, clock: FakeClock) -> None:
        """A limit below 1 lists one job, a limit above 200 lists at most 200."""
        for _ in range(201):
            store.create(make_job(clock))
        assert len(store.list("acme", limit=0).jobs) == 1
        assert len(store.list("acme", limit=-3).jobs) == 1
        big = store.list("acme", limit=10_000)
        assert len(big.jobs) == 200
        assert big.next_cursor is not None

    @pytest.mark.parametrize(
        "cursor",
        ["", "!!!", "not base64 at all", "eyJ", "W10", "WyJ4IiwgInkiXQ", "bnVsbA", "é", "a" * 600],
    )
    def test_list_malformed_cursor_raises_validation_error(
        self, store: JobStore, cursor: str
    ) -> None:
        """A cursor the store did not issue is a ValidationError with code ``invalid_cursor``."""
        with pytest.raises(ValidationError) as info:
            store.list("acme", cursor=cursor)
        assert info.value.code == "invalid_cursor"

    # ---------------------------------------------------------------------------------------
    # claim

    def test_claim_queued_job(self, store: JobStore, clock: FakeClock) -> None:
        """Claiming a queued job makes it running at attempt 1 with a lease from now."""
        job, _ = store.create(make_job(clock))
        clock.advance(3)
        claimed = store.claim(job.id, lease_s=LEASE_S)
        assert claimed is not None
        assert claimed.status is JobState.RUNNING
        assert claimed.attempts == 1
        assert claimed.started_at == clock()
        assert claimed.lease_expires_at == clock() + timedelta(seconds=LEASE_S)
        assert store.get(job.id) == claimed

    def test_claim_twice_returns_none(self, store: JobStore, clock: FakeClock) -> None:
        """A job held under a live lease cannot be claimed again."""
        claimed = self._claimed(store, clock)
        clock.advance(LEASE_S - 1)
        assert store.claim(claimed.id, lease_s=LEASE_S) is None
        assert store.get(claimed.id) == claimed

    def test_claim_unknown_job_returns_none(self, store: JobStore) -> None:
        """Claiming an id that does not exist returns None."""
        assert store.claim(new_job_id(), lease_s=LEASE_S) is None

    def test_claim_after_lease_expiry_takes_over(self, store: JobStore, clock: FakeClock) -> None:
        """Once the lease expired, another worker claims the job as attempt 2."""
        first = self._claimed(store, clock)
        clock.advance(LEASE_S + 1)
        second = store.claim(first.id, lease_s=LEASE_S)
        assert second is not None
        assert second.attempts == 2
        assert second.started_at == clock()
        assert second.lease_expires_at == clock() + timedelta(seconds=LEASE_S)

    def test_claim_terminal_job_returns_none(self, store: JobStore, clock: FakeClock) -> None:
        """Succeeded and failed jobs are never claimed, however old their lease."""
        done = self._claimed(store, clock)
        assert store.succeed(done.id, 1, JobResult("acme/x/a.pdf", "a.pdf", "application/pdf", 1))
        failed = self._claimed(store, clock)
        assert store.fail(failed.id, 1, JobError("boom", "boom"))
        clock.advance(LEASE_S * 10)
        assert store.claim(done.id, lease_s=LEASE_S) is None
        assert store.claim(failed.id, lease_s=LEASE_S) is None

    def test_claim_with_attempts_exhausted_returns_none(
        self, store: JobStore, clock: FakeClock
    ) -> None:
        """A job whose last attempt's lease expired is not claimable; it shows in exhausted()."""
        job = self._claimed(store, clock, max_attempts=1)
        clock.advance(LEASE_S + 1)
        assert store.claim(job.id, lease_s=LEASE_S) is None
        assert [j.id for j in store.exhausted()] == [job.id]
        assert store.claimable() == []

    def test_claimed_job_keeps_last_error(self, store: JobStore, clock: FakeClock) -> None:
        """A retry's claim keeps the previous attempt's error until the job finishes."""
        job = self._claimed(store, clock)
        error = JobError("conversion_failed", "crashed")
        assert store.requeue(job.id, 1, error)
        again = store.claim(job.id, lease_s=LEASE_S)
        assert again is not None
        assert again.attempts == 2
        assert again.error == error

    def test_concurrent_claims_exactly_one_wins(self, store: JobStore, clock: FakeClock) -> None:
        """Eight threads claiming one job at once: exactly one gets it, at attempt 1."""
        for _ in range(20):
            job, _ = store.create(make_job(clock))
            winners = [r for r in _claim_race(store, job.id) if r is not None]
            assert len(winners) == 1
            assert winners[0].attempts == 1
            got = store.get(job.id)
            assert got is not None
            assert got.attempts == 1

    def test_concurrent_takeover_exactly_one_wins(self, store: JobStore, clock: FakeClock) -> None:
        """Eight threads taking over one expired lease at once: exactly one gets attempt 2."""
        for _ in range(5):
            job = self._claimed(store, clock)
            clock.advance(LEASE_S + 1)
            winners = [r for r in _claim_race(store, job.id) if r is not None]
            assert len(winners) == 1
            assert winners[0].attempts == 2

    # ---------------------------------------------------------------------------------------
    # heartbeat

    def test_heartbeat_extends_lease(self, store: JobStore, clock: FakeClock) -> None:
        """A heartbeat at the held attempt moves the lease to now + lease_s."""
        job = self._claimed(store, clock)
        clock.advance(20)
        assert store.heartbeat(job.id, 1, lease_s=LEASE_S)
        got = store.get(job.id)
        assert got is not None
        assert got.lease_expires_at == clock() + timedelta(seconds=LEASE_S)
        clock.advance(LEASE_S - 1)  # past the first lease, within the renewed one
        assert store.claim(job.id, lease_s=LEASE_S) is None

    def test_heartbeat_after_takeover_fails(self, store: JobStore, clock: FakeClock) -> None:
        """The first worker's heartbeat fails once another worker took the job over."""
        job = self._claimed(store, clock)
        clock.advance(LEASE_S + 1)
        taken = store.claim(job.id, lease_s=LEASE_S)
        assert taken is not None
        assert not store.heartbeat(job.id, 1, lease_s=LEASE_S)
        assert store.get(job.id) == taken

    def test_heartbeat_on_finished_job_fails(self, store: JobStore, clock: FakeClock) -> None:
        """No lease to extend once the job is no longer running."""
        job = self._claimed(store, clock)
        assert store.fail(job.id, 1, JobError("x", "y"))
        assert not store.heartbeat(job.id, 1, lease_s=LEASE_S)

    def test_heartbeat_unknown_job_fails(self, store: JobStore) -> None:
        """Heartbeat of an id that does not exist returns False."""
        assert not store.heartbeat(new_job_id(), 1, lease_s=LEASE_S)

    # ---------------------------------------------------------------------------------------
    # succeed / fail / requeue (fencing)

    def test_succeed_stores_result(self, store: JobStore, clock: FakeClock) -> None:
        """succeed sets the result and finish time, and clears the lease and the last error."""
        job = self._claimed(store, clock)
        assert store.requeue(job.id, 1, JobError("conversion_failed", "first try"))
        job2 = store.claim(job.id, lease_s=LEASE_S)
        assert job2 is not None
        clock.advance(4)
        result = JobResult(f"acme/{job.id}/out.pdf", "out.pdf", "application/pdf", 2048)
        assert store.succeed(job.id, 2, result)
        got = store.get(job.id)
        assert got is not None
        assert got.status is JobState.SUCCEEDED
        assert got.result == result
        assert got.finished_at == clock()
        assert got.lease_expires_at is None
        assert got.error is None
        assert got.attempts == 2

    def test_succeed_with_stale_attempt_is_fenced(self, store: JobStore, clock: FakeClock) -> None:
        """A worker whose lease was taken over cannot succeed; the row is unchanged."""
        job = self._claimed(store, clock)
        clock.advance(LEASE_S + 1)
        taken = store.claim(job.id, lease_s=LEASE_S)
        assert taken is not None
        assert not store.succeed(job.id, 1, JobResult("acme/x/a.pdf", "a.pdf", "a/b", 1))
        assert store.get(job.id) == taken

    def test_succeed_twice_is_refused(self, store: JobStore, clock: FakeClock) -> None:
        """A finished job stays finished: a second succeed returns False."""
        job = self._claimed(store, clock)
        result = JobResult("acme/x/a.pdf", "a.pdf", "application/pdf", 1)
        assert store.succeed(job.id, 1, result)
        before = store.get(job.id)
        assert not store.succeed(job.id, 1, JobResult("acme/x/b.pdf", "b.pdf", "a/b", 2))
        assert store.get(job.id) == before

    def test_fail_records_error(self, store: JobStore, clock: FakeClock) -> None:
        """fail at the held attempt sets the error and finish time and clears the lease."""
        job = self._claimed(store, clock)
        clock.advance(2)
        error = JobError("template_error", "undefined name 'x'")
        assert store.fail(job.id, 1, error)
        got = store.get(job.id)
        assert got is not None
        assert got.status is JobState.FAILED
        assert got.error == error
        assert got.finished_at == clock()
        assert got.lease_expires_at is None
        assert got.result is None

    def test_fail_with_stale_attempt_is_fenced(self, store: JobStore, clock: FakeClock) -> None:
        """A worker whose lease was taken over cannot fail the job; the row is unchanged."""
        job = self._claimed(store, clock)
        clock.advance(LEASE_S + 1)
        taken = store.claim(job.id, lease_s=LEASE_S)
        assert taken is not None
        assert not store.fail(job.id, 1, JobError("x", "late"))
        assert store.get(job.id) == taken

    def test_fail_without_attempt_fails_queued_job(self, store: JobStore, clock: FakeClock) -> None:
        """With attempt None a queued job fails (e.g. it could not be enqueued)."""
        job, _ = store.create(make_job(clock))
        error = JobError("service_unavailable", "queue down")
        assert store.fail(job.id, None, error)
        got = store.get(job.id)
        assert got is not None
        assert (got.status, got.error, got.finished_at) == (JobState.FAILED, error, clock())

    def test_fail_without_attempt_fails_running_job(
        self, store: JobStore, clock: FakeClock
    ) -> None:
        """With attempt None a running job fails whatever attempt holds it (the sweeper)."""
        job = self._claimed(store, clock)
        assert store.fail(job.id, None, JobError("lease_expired", "worker died"))
        got = store.get(job.id)
        assert got is not None
        assert got.status is JobState.FAILED

    def test_fail_without_attempt_leaves_terminal_job(
        self, store: JobStore, clock: FakeClock
    ) -> None:
        """With attempt None a succeeded job is left as it is."""
        job = self._claimed(store, clock)
        assert store.succeed(job.id, 1, JobResult("acme/x/a.pdf", "a.pdf", "application/pdf", 1))
        before = store.get(job.id)
        assert not store.fail(job.id, None, JobError("x", "y"))
        assert store.get(job.id) == before

    def test_requeue_keeps_error_as_last_error(self, store: JobStore, clock: FakeClock) -> None:
        """requeue puts the job back to queued without a lease, remembering the error."""
        job = self._claimed(store, clock)
        error = JobError("conversion_failed", "soffice crashed")
        assert store.requeue(job.id, 1, error)
        got = store.get(job.id)
        assert got is not None
        assert got.status is JobState.QUEUED
        assert got.error == error
        assert got.lease_expires_at is None
        assert got.attempts == 1
        assert store.claimable() == [job.id]

    def test_fail_with_lease_expired_spares_a_renewed_lease(
        self, store: JobStore, clock: FakeClock
    ) -> None:
        """The sweeper's fail (lease_expired=True) does nothing to a job whose worker renewed
        its lease after the sweeper saw it expired; it fails a job whose lease is still out."""
        job = self._claimed(store, clock)
        clock.advance(LEASE_S + 1)
        assert store.heartbeat(job.id, 1, lease_s=LEASE_S)  # the worker was only slow
        assert not store.fail(job.id, 1, JobError("worker_lost", "x"), lease_expired=True)
        got = store.get(job.id)
        assert got is not None and got.status is JobState.RUNNING
        clock.advance(LEASE_S + 1)
        assert store.fail(job.id, 1, JobError("worker_lost", "x"), lease_expired=True)
        got = store.get(job.id)
        assert got is not None and got.status is JobState.FAILED

    def test_release_hands_the_job_back_without_counting_the_attempt(
        self, store: JobStore, clock: FakeClock
    ) -> None:
        """release (a graceful stop) makes the job queued and claimable at once, with the
        attempt given back; the next claim is attempt 1 again."""
        job = self._claimed(store, clock)
        assert store.release(job.id, 1)
        got = store.get(job.id)
        assert got is not None
        assert got.status is JobState.QUEUED
        assert got.attempts == 0
        assert got.lease_expires_at is None
        assert store.claimable() == [job.id]
        again = store.claim(job.id, lease_s=LEASE_S)
        assert again is not None and again.attempts == 1

    def test_release_is_fenced(self, store: JobStore, clock: FakeClock) -> None:
        """release by a stale attempt, or of a finished job, changes nothing."""
        job = self._claimed(store, clock)
        assert not store.release(job.id, 2)
        assert store.succeed(job.id, 1, JobResult("t/k/f.txt", "f.txt", "text/plain", 1))
        assert not store.release(job.id, 1)
        got = store.get(job.id)
        assert got is not None and got.status is JobState.SUCCEEDED
        assert not store.release("00000000-0000-0000-0000-000000000000", 1)

    def test_retry_gives_a_failed_job_fresh_attempts(
        self, store: JobStore, clock: FakeClock
    ) -> None:
        """retry (an operator's requeue) makes a failed job queued with attempts 0, no
        times, the error kept as the last error; it is claimable at once, at attempt 1."""
        job = self._claimed(store, clock, max_attempts=1)
        error = JobError("conversion_timeout", "too slow")
        assert store.fail(job.id, 1, error)
        clock.advance(5)
        assert store.retry(job.id)
        got = store.get(job.id)
        assert got is not None
        assert got.status is JobState.QUEUED
        assert got.attempts == 0
        assert got.error == error
        assert (got.started_at, got.finished_at, got.lease_expires_at) == (None, None, None)
        assert store.claimable() == [job.id]
        again = store.claim(job.id, lease_s=LEASE_S)
        assert again is not None and again.attempts == 1

    def test_retry_refuses_a_job_that_is_not_failed(
        self, store: JobStore, clock: FakeClock
    ) -> None:
        """retry of a queued, running, succeeded or absent job changes nothing."""
        queued, _ = store.create(make_job(clock))
        running = self._claimed(store, clock)
        done = self._claimed(store, clock)
        assert store.succeed(done.id, 1, JobResult("t/k/f.txt", "f.txt", "text/plain", 1))
        for job in (queued, running, done):
            before = store.get(job.id)
            assert not store.retry(job.id)
            assert store.get(job.id) == before
        assert not store.retry("00000000-0000-0000-0000-000000000000")

    def test_requeue_with_delay_waits_for_it(self, store: JobStore, clock: FakeClock) -> None:
        """A requeued job with a retry delay is neither claimable nor listed before it passes,
        so a sweeper or a restarted worker cannot cut a backoff short."""
        job = self._claimed(store, clock)
        assert store.requeue(job.id, 1, JobError("conversion_failed", "crash"), delay_s=10)
        assert store.claimable() == []
        assert store.claim(job.id, lease_s=LEASE_S) is None
        clock.advance(10)
        assert store.claimable() == [job.id]
        claimed = store.claim(job.id, lease_s=LEASE_S)
        assert claimed is not None and claimed.attempts == 2

    def test_claimable_due_before_leaves_fresh_queued_jobs_to_the_broker(
        self, store: JobStore, clock: FakeClock
    ) -> None:
        """With ``due_before``, a queued job is listed only once it has been due since before
        that time (its creation, or its retry delay's end); a running job whose lease expired
        is listed whatever ``due_before`` says."""
        old, _ = store.create(make_job(clock))
        clock.advance(60)
        fresh, _ = store.create(make_job(clock))
        delayed = self._claimed(store, clock)
        assert store.requeue(delayed.id, 1, JobError("conversion_failed", "x"), delay_s=300)
        lost = self._claimed(store, clock)
        clock.advance(LEASE_S + 1)  # lost's lease ran out
        now = clock()
        assert set(store.claimable(due_before=now - timedelta(seconds=35))) == {old.id, lost.id}
        assert set(store.claimable()) == {old.id, fresh.id, lost.id}
        clock.advance(300)  # delayed is due now, since about 30 s
        now = clock()
        assert set(store.claimable(due_before=now - timedelta(seconds=10))) == {
            old.id,
            fresh.id,
            delayed.id,
            lost.id,
        }

    def test_requeue_with_stale_attempt_is_fenced(self, store: JobStore, clock: FakeClock) -> None:
        """A worker whose lease was taken over cannot requeue; the row is unchanged."""
        job = self._claimed(store, clock)
        clock.advance(LEASE_S + 1)
        taken = store.claim(job.id, lease_s=LEASE_S)
        assert taken is not None
        assert not store.requeue(job.id, 1, JobError("x", "late"))
        assert store.get(job.id) == taken

    def test_requeue_of_queued_job_is_refused(self, store: JobStore, clock: FakeClock) -> None:
        """Only a running job can be requeued."""
        job, _ = store.create(make_job(clock))
        assert not store.requeue(job.id, 0, JobError("x", "y"))
        assert store.get(job.id) == job

    # ---------------------------------------------------------------------------------------
    # delete

    def test_delete_removes_job(self, store: JobStore, clock: FakeClock) -> None:
        """delete returns True and the job is gone (and its idempotency key is free again)."""
        job, _ = store.create(make_job(clock, idempotency_key="k"))
        assert store.delete(job.id)
        assert store.get(job.id) is None
        _, created = store.create(make_job(clock, idempotency_key="k"))
        assert created

    def test_delete_absent_job_returns_false(self, store: JobStore) -> None:
        """Deleting an id that does not exist returns False."""
        assert not store.delete(new_job_id())

    # ---------------------------------------------------------------------------------------
    # sweeping: claimable / exhausted / expired

    def test_claimable_lists_queued_jobs_oldest_first(
        self, store: JobStore, clock: FakeClock
    ) -> None:
        """Queued jobs of every tenant are claimable, oldest first, up to ``limit``."""
        ids = []
        for tenant in ("acme", "globex", "acme"):
            ids.append(store.create(make_job(clock, tenant=tenant))[0].id)
            clock.advance(1)
        assert store.claimable() == ids
        assert store.claimable(limit=2) == ids[:2]

    def test_claimable_content(self, store: JobStore, clock: FakeClock) -> None:
        """Claimable: queued, or running with an expired lease and attempts left. Not: running
        under a live lease, finished, or expired on its last attempt."""
        expired = self._claimed(store, clock)
        last_try = self._claimed(store, clock, max_attempts=1)
        done = self._claimed(store, clock)
        assert store.succeed(done.id, 1, JobResult("acme/x/a.pdf", "a.pdf", "a/b", 1))
        clock.advance(LEASE_S + 1)
        live = self._claimed(store, clock)
        queued, _ = store.create(make_job(clock))
        assert live.id not in store.claimable()
        assert set(store.claimable()) == {expired.id, queued.id}
        assert last_try.id not in store.claimable()

    def test_queue_stats_counts_claimable_jobs_and_the_oldest_age(
        self, store: JobStore, clock: FakeClock
    ) -> None:
        """queue_stats(): how many jobs are claimable now and the age in seconds of the oldest
        one (by creation time); ``(0, 0.0)`` when none is."""
        assert store.queue_stats() == (0, 0.0)
        first, _ = store.create(make_job(clock))
        clock.advance(5)
        store.create(make_job(clock, tenant="globex"))
        running = self._claimed(store, clock)  # under a live lease: not waiting
        clock.advance(10)
        depth, age = store.queue_stats()
        assert (depth, age) == (2, 15.0)
        assert store.claim(first.id, lease_s=LEASE_S) is not None
        clock.advance(LEASE_S + 1)  # both leases expired: claimable again, so waiting
        assert store.queue_stats() == (3, 15.0 + LEASE_S + 1)
        assert running.id in store.claimable()

    def test_exhausted_lists_only_expired_last_attempts(
        self, store: JobStore, clock: FakeClock
    ) -> None:
        """exhausted(): running, lease expired, no attempts left; a live last attempt is not."""
        dead = self._claimed(store, clock, max_attempts=1)
        self._claimed(store, clock)  # expired but with attempts left
        clock.advance(LEASE_S + 1)
        live_last = self._claimed(store, clock, max_attempts=1)
        assert [j.id for j in store.exhausted()] == [dead.id]
        clock.advance(LEASE_S + 1)
        assert [j.id for j in store.exhausted()] == [dead.id, live_last.id]
        assert [j.id for j in store.exhausted(limit=1)] == [dead.id]

    def test_expired_lists_jobs_created_before(self, store: JobStore, clock: FakeClock) -> None:
        """expired(before) returns jobs of any state created before ``before``, oldest first."""
        old_done = self._claimed(store, clock)
        assert store.fail(old_done.id, 1, JobError("x", "y"))
        clock.advance(1)
        old_queued, _ = store.create(make_job(clock, tenant="globex"))
        clock.advance(1)
        cutoff = clock()
        store.create(make_job(clock))  # created exactly at the cutoff: not before it
        clock.advance(1)
        store.create(make_job(clock))
        assert [j.id for j in store.expired(cutoff)] == [old_done.id, old_queued.id]
        assert [j.id for j in store.expired(cutoff, limit=1)] == [old_done.id]
        assert store.expired(datetime(2000, 1, 1, tzinfo=UTC)) == []

    # ---------------------------------------------------------------------------------------
    # health

    def test_check_passes_when_reachable(self, store: JobStore) -> None:
        """check() returns quietly when the database answers."""
        store.check()
