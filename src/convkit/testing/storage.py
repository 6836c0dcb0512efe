"""The behaviour every :class:`convkit.ports.Storage` backend must show.

Subclass :class:`StorageContract` in a ``Test*`` class and provide a ``storage`` fixture that
returns a fresh, empty storage::

    class TestMyStorage(StorageContract):
        @pytest.fixture
        def storage(self) -> Storage:
            return MyStorage(...)

A storage that declares ``signed_urls`` adds :class:`SignedUrlContract` to the bases (its URLs
are fetched with plain :mod:`urllib`, so the test needs the storage's server reachable).
"""

from __future__ import annotations

import io
import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convkit.backends.storages.memory import MemoryStorage
from convkit.errors import ConfigError, StorageError
from convkit.ports import Storage

__all__ = [
    "INVALID_KEYS",
    "FailingStream",
    "SignedUrlContract",
    "SigningMemoryStorage",
    "StorageContract",
    "escaping_keys",
]

#: Keys every method must refuse with ``StorageError(code="invalid_key")``.
INVALID_KEYS: tuple[str, ...] = (
    "../x",
    "/abs",
    "a/../b",
    "a//b",
    "a\\b",
    ".hidden",
    "a/./b",
    "",
    "a\x00b",
    "a/b/c/d/e/f/g/h/i",
)

_Call = Callable[[Storage, str, Path], object]

# Every public method that takes a key, so none of them can skip validation.
_KEYED_CALLS: dict[str, _Call] = {
    "put": lambda s, k, p: s.put(k, b"x"),
    "put_stream": lambda s, k, p: s.put(k, io.BytesIO(b"x")),
    "put_file": lambda s, k, p: s.put_file(k, p),
    "open": lambda s, k, p: s.open(k),
    "read": lambda s, k, p: s.read(k),
    "iter_chunks": lambda s, k, p: s.iter_chunks(k),
    "exists": lambda s, k, p: s.exists(k),
    "delete": lambda s, k, p: s.delete(k),
    "signed_url": lambda s, k, p: s.signed_url(k, expires_s=60),
    "list": lambda s, k, p: s.list(k),
    "delete_prefix": lambda s, k, p: s.delete_prefix(k),
}

_segment = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="/"), min_size=0, max_size=8
)


@st.composite
def escaping_keys(draw: st.DrawFn) -> str:
    """Any text with a ``..`` segment, or any text starting with ``/``."""
    if draw(st.booleans()):
        return "/" + draw(st.text(max_size=30))
    before = draw(st.lists(_segment, max_size=4))
    after = draw(st.lists(_segment, max_size=4))
    return "/".join([*before, "..", *after])


class FailingStream(io.RawIOBase):
    """Yields ``good`` bytes, then fails the way a dropped upload does (wrap it in
    :class:`io.BufferedReader` to pass it as a binary stream)."""

    def __init__(self, good: int) -> None:
        self._left = good

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._left <= 0:
            raise ConnectionResetError("client went away mid-upload")
        n = min(len(buffer), self._left, 64 * 1024)
        buffer[:n] = b"x" * n
        self._left -= n
        return n


class StorageContract:
    """Mix-in of contract tests; needs a ``storage`` fixture (a fresh, empty Storage)."""

    # -- round trips ------------------------------------------------------------------------
    def test_put_bytes_round_trip(self, storage: Storage) -> None:
        """Bytes put under a key read back unchanged; put returns the byte count."""
        assert storage.put("t/job1/out.pdf", b"%PDF-1.7 hello") == 14
        assert storage.read("t/job1/out.pdf") == b"%PDF-1.7 hello"

    def test_put_stream_round_trip(self, storage: Storage) -> None:
        """A binary stream is stored in full."""
        assert storage.put("t/job1/out.txt", io.BytesIO(b"streamed")) == 8
        assert storage.read("t/job1/out.txt") == b"streamed"

    def test_put_file_round_trip(self, storage: Storage, tmp_path: Path) -> None:
        """put_file stores the content of a local file."""
        src = tmp_path / "src.bin"
        src.write_bytes(b"from disk")
        assert storage.put_file("t/job1/f.bin", src) == 9
        assert storage.read("t/job1/f.bin") == b"from disk"

    def test_empty_file_round_trip(self, storage: Storage) -> None:
        """An empty artifact exists and reads back empty."""
        assert storage.put("t/job1/empty", b"") == 0
        assert storage.exists("t/job1/empty")
        assert storage.read("t/job1/empty") == b""

    def test_open_returns_readable_stream(self, storage: Storage) -> None:
        """open gives a binary stream usable as a context manager."""
        storage.put("t/job1/a", b"abc")
        with storage.open("t/job1/a") as fh:
            assert fh.read() == b"abc"

    def test_large_file_read_in_chunks(self, storage: Storage) -> None:
        """A 5 MB artifact comes back intact through iter_chunks, in bounded chunks."""
        payload = bytes(range(256)) * (5 * 1024 * 1024 // 256)
        storage.put("t/job1/big.bin", io.BytesIO(payload))
        chunks = list(storage.iter_chunks("t/job1/big.bin", chunk_size=256 * 1024))
        assert len(chunks) >= 20
        assert all(len(c) <= 256 * 1024 for c in chunks)
        assert b"".join(chunks) == payload

    def test_overwrite_replaces_content(self, storage: Storage) -> None:
        """A second put of the same key replaces the first, including with shorter content."""
        storage.put("t/job1/a", b"first, longer content")
        storage.put("t/job1/a", b"second")
        assert storage.read("t/job1/a") == b"second"
        assert storage.list("t/job1") == ["t/job1/a"]

    # -- exists / list ------------------------------------------------------------------------
    def test_exists(self, storage: Storage) -> None:
        """exists is False before a put and True after."""
        assert not storage.exists("t/job1/a")
        storage.put("t/job1/a", b"x")
        assert storage.exists("t/job1/a")

    def test_prefix_of_a_key_is_not_a_key(self, storage: Storage) -> None:
        """The folder part of a key is not itself an existing, openable key."""
        storage.put("t/job1/a", b"x")
        assert not storage.exists("t/job1")
        with pytest.raises(FileNotFoundError):
            storage.open("t/job1")

    def test_list_returns_full_keys_sorted(self, storage: Storage) -> None:
        """list gives every key under ``prefix/``, nested ones too, as full keys, sorted."""
        for key in ("t/job1/b", "t/job1/a", "t/job1/sub/c", "t/other/z"):
            storage.put(key, b"x")
        assert storage.list("t/job1") == ["t/job1/a", "t/job1/b", "t/job1/sub/c"]
        assert storage.list("t") == ["t/job1/a", "t/job1/b", "t/job1/sub/c", "t/other/z"]

    def test_list_missing_prefix_is_empty(self, storage: Storage) -> None:
        """Listing a prefix nothing was stored under gives an empty list, not an error."""
        assert storage.list("nobody/here") == []

    def test_list_excludes_siblings_sharing_a_name_prefix(self, storage: Storage) -> None:
        """``t/job1`` lists nothing of ``t/job10``: prefixes are whole segments."""
        storage.put("t/job1/a", b"x")
        storage.put("t/job10/a", b"x")
        storage.put("t/job1x", b"x")
        assert storage.list("t/job1") == ["t/job1/a"]

    def test_list_of_a_key_is_empty(self, storage: Storage) -> None:
        """A key has nothing under it, even though its name is a prefix of itself."""
        storage.put("t/job1", b"x")
        assert storage.list("t/job1") == []

    # -- delete_prefix --------------------------------------------------------------------------
    def test_delete_prefix_removes_everything_under_it(self, storage: Storage) -> None:
        """delete_prefix removes every key under the prefix and returns how many."""
        for key in ("t/job1/a", "t/job1/b", "t/job1/sub/c"):
            storage.put(key, b"x")
        assert storage.delete_prefix("t/job1") == 3
        assert storage.list("t/job1") == []
        assert not storage.exists("t/job1/sub/c")

    def test_delete_prefix_leaves_siblings(self, storage: Storage) -> None:
        """Deleting ``t/job1`` keeps ``t/job10`` and ``t/job1x``."""
        for key in ("t/job1/a", "t/job10/a", "t/job1x"):
            storage.put(key, b"x")
        assert storage.delete_prefix("t/job1") == 1
        assert storage.list("t") == ["t/job10/a", "t/job1x"]

    def test_delete_missing_prefix_returns_zero(self, storage: Storage) -> None:
        """Deleting a prefix with nothing under it is not an error."""
        assert storage.delete_prefix("t/nothing") == 0

    def test_put_after_delete_prefix(self, storage: Storage) -> None:
        """A deleted prefix can be written again."""
        storage.put("t/job1/a", b"old")
        storage.delete_prefix("t/job1")
        storage.put("t/job1/a", b"new")
        assert storage.read("t/job1/a") == b"new"

    # -- delete ---------------------------------------------------------------------------------
    def test_delete_removes_one_key(self, storage: Storage) -> None:
        """delete removes exactly that key and says so; a second delete finds nothing."""
        for key in ("t/job1/source.docx", "t/job1/out.pdf"):
            storage.put(key, b"x")
        assert storage.delete("t/job1/source.docx") is True
        assert storage.list("t/job1") == ["t/job1/out.pdf"]
        assert storage.delete("t/job1/source.docx") is False

    def test_delete_of_a_prefix_deletes_nothing(self, storage: Storage) -> None:
        """A prefix is not a key: delete leaves what is under it (delete_prefix removes that)."""
        storage.put("t/job1/a", b"x")
        assert storage.delete("t/job1") is False
        assert storage.list("t/job1") == ["t/job1/a"]

    # -- readiness and capabilities ---------------------------------------------------------
    def test_check_passes_on_an_empty_storage(self, storage: Storage) -> None:
        """A fresh, empty storage is ready (an object store has no folder until a key exists),
        and checking leaves no key behind."""
        storage.check()
        storage.check()
        storage.put("t/job1/a", b"x")
        storage.check()
        assert storage.list("t") == ["t/job1/a"]

    def test_signed_url_only_where_declared(self, storage: Storage) -> None:
        """A storage without the ``signed_urls`` capability refuses to sign with ConfigError."""
        storage.put("t/job1/a", b"x")
        if storage.signed_urls:
            assert storage.signed_url("t/job1/a", expires_s=60)
        else:
            with pytest.raises(ConfigError):
                storage.signed_url("t/job1/a", expires_s=60)

    # -- missing keys ---------------------------------------------------------------------------
    def test_open_missing_raises_file_not_found(self, storage: Storage) -> None:
        """Opening or reading a key that was never stored raises FileNotFoundError."""
        with pytest.raises(FileNotFoundError):
            storage.open("t/job1/missing")
        with pytest.raises(FileNotFoundError):
            storage.read("t/job1/missing")

    def test_iter_chunks_missing_fails_early(self, storage: Storage) -> None:
        """iter_chunks raises when called, not on first iteration."""
        with pytest.raises(FileNotFoundError):
            storage.iter_chunks("t/job1/missing")

    # -- key validation -------------------------------------------------------------------------
    @pytest.mark.parametrize("method", sorted(_KEYED_CALLS))
    @pytest.mark.parametrize("key", INVALID_KEYS, ids=repr)
    def test_invalid_key_rejected(
        self, storage: Storage, tmp_path: Path, key: str, method: str
    ) -> None:
        """Every keyed method refuses an unsafe key with StorageError(code="invalid_key")."""
        src = tmp_path / "src"
        src.write_bytes(b"x")
        with pytest.raises(StorageError) as info:
            _KEYED_CALLS[method](storage, key, src)
        assert info.value.code == "invalid_key"

    def test_escaping_keys_rejected(self, storage: Storage, tmp_path: Path) -> None:
        """Any text with a ``..`` segment or a leading ``/`` is refused by every method."""

        # Given inside the test, so one storage serves every example (it is never written:
        # each call must fail before touching it) and subclasses share no Hypothesis state.
        @settings(max_examples=60, deadline=None, database=None)
        @given(key=escaping_keys())
        def check(key: str) -> None:
            for method, call in _KEYED_CALLS.items():
                with pytest.raises(StorageError) as info:
                    call(storage, key, tmp_path / "unused")
                assert info.value.code == "invalid_key", method

        check()

    # -- atomicity ------------------------------------------------------------------------------
    def test_readers_never_see_a_partial_put(self, storage: Storage) -> None:
        """While one thread keeps overwriting a key with whole ~1 MB payloads, no read returns
        anything but one complete payload. A read racing an overwrite may fail with an OSError
        instead (s3fs refuses to go on reading an object whose ETag changed under it); once the
        writer is done, a read returns its last payload."""
        size = 1024 * 1024
        payloads = [bytes([i]) * (size + i) for i in range(1, 5)]
        storage.put("t/job1/hot", payloads[0])
        done = threading.Event()
        errors: list[BaseException] = []
        writes = 24

        def writer() -> None:
            try:
                for n in range(writes):
                    storage.put("t/job1/hot", io.BytesIO(payloads[n % len(payloads)]))
            except BaseException as exc:
                errors.append(exc)
            finally:
                done.set()

        bad: list[int] = []
        reads = 0
        thread = threading.Thread(target=writer)
        thread.start()
        try:
            while not done.is_set():
                try:
                    data = storage.read("t/job1/hot")
                except OSError:
                    continue
                reads += 1
                if data not in payloads:
                    bad.append(len(data))
        finally:
            thread.join()
        assert not errors
        assert not bad, f"{len(bad)} of {reads} reads saw a partial payload (sizes {bad[:5]})"
        assert storage.read("t/job1/hot") == payloads[(writes - 1) % len(payloads)]

    def test_failed_put_leaves_nothing(self, storage: Storage) -> None:
        """A source stream failing mid-way stores no key and leaves no temp file in list."""
        with pytest.raises((StorageError, ConnectionResetError)):
            storage.put("t/job1/out", io.BufferedReader(FailingStream(200 * 1024)))
        assert not storage.exists("t/job1/out")
        assert storage.list("t") == []

    def test_failed_overwrite_keeps_previous_content(self, storage: Storage) -> None:
        """A failed put over an existing key leaves the old artifact intact."""
        storage.put("t/job1/out", b"good")
        with pytest.raises((StorageError, ConnectionResetError)):
            storage.put("t/job1/out", io.BufferedReader(FailingStream(200 * 1024)))
        assert storage.read("t/job1/out") == b"good"
        assert storage.list("t") == ["t/job1/out"]


class SignedUrlContract:
    """Mix-in for storages that declare ``signed_urls``; needs the ``storage`` fixture."""

    def test_declares_signed_urls(self, storage: Storage) -> None:
        """The capability is declared on the class, where callers read it."""
        assert type(storage).signed_urls is True

    def test_signed_url_fetches_the_bytes(self, storage: Storage) -> None:
        """A signed URL, fetched with plain urllib (no credentials) before it expires, gives
        the stored bytes."""
        payload = b"%PDF-1.7 signed \x00\xff"
        storage.put("t/job1/out.pdf", payload)
        url = storage.signed_url("t/job1/out.pdf", expires_s=60)
        with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310  # http(s) only
            assert response.read() == payload

    def test_signed_urls_differ_per_key(self, storage: Storage) -> None:
        """Each key gets its own URL; one key's URL never reads another key's bytes."""
        storage.put("t/job1/a", b"first")
        storage.put("t/job1/b", b"second")
        url_b = storage.signed_url("t/job1/b", expires_s=60)
        assert storage.signed_url("t/job1/a", expires_s=60) != url_b
        with urllib.request.urlopen(url_b, timeout=30) as response:  # noqa: S310
            assert response.read() == b"second"


class SigningMemoryStorage(MemoryStorage):
    """A :class:`MemoryStorage` declaring ``signed_urls``: its "signed" URL is
    ``https://signed.invalid/<key>?expires_s=<n>`` (never fetchable), enough to test the
    code that redirects to one."""

    name = "signing-memory"
    signed_urls = True

    def _signed_url(self, key: str, expires_s: float) -> str:
        return f"https://signed.invalid/{key}?expires_s={expires_s:g}"
