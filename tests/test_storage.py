"""Storage backends: the contract on local folders and memory, plus local-only safety checks."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import convkit
from convkit.backends.storages import create_storage
from convkit.backends.storages.fsspec import FsspecStorage, create_fsspec_storage
from convkit.backends.storages.memory import MemoryStorage, create_memory_storage
from convkit.errors import ServiceUnavailable, StorageError
from convkit.plugins import DEFAULT_PLUGINS
from convkit.ports import Storage
from convkit.registry import Registry
from convkit.testing.storage import SignedUrlContract, StorageContract
from tests.conftest import S3_BUCKET


def _files_on_disk(root: Path) -> set[str]:
    return {
        Path(dirpath, name).relative_to(root).as_posix()
        for dirpath, _, names in os.walk(root)
        for name in names
    }


class TestLocalStorage(StorageContract):
    @pytest.fixture
    def storage(self, tmp_path: Path) -> Storage:
        return FsspecStorage(str(tmp_path / "root"))


class TestLocalStorageFileUrl(StorageContract):
    @pytest.fixture
    def storage(self, tmp_path: Path) -> Storage:
        return FsspecStorage((tmp_path / "root").as_uri())


class TestS3Storage(StorageContract, SignedUrlContract):
    """The contract on S3 (moto's server) through s3fs, under a prefix that starts empty."""

    @pytest.fixture
    def storage(self, s3_options: dict[str, Any]) -> Storage:
        return FsspecStorage(f"s3://{S3_BUCKET}/artifacts", **s3_options)


class TestMemoryStorage(StorageContract):
    @pytest.fixture
    def storage(self) -> Storage:
        return MemoryStorage()


# --------------------------------------------------------------------------------------------------
# Local folders only


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "root"


@pytest.fixture
def local(root: Path) -> FsspecStorage:
    return FsspecStorage(str(root))


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    out = tmp_path / "outside"
    out.mkdir()
    (out / "secret").write_bytes(b"not yours")
    return out


def test_relative_root_is_created_and_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    storage = FsspecStorage("storage")
    assert storage.root == os.path.realpath(tmp_path / "storage")
    assert (tmp_path / "storage").is_dir()


def test_symlinked_folder_pointing_outside_is_refused(
    local: FsspecStorage, root: Path, outside: Path
) -> None:
    (root / "t").symlink_to(outside, target_is_directory=True)
    calls: dict[str, Callable[[], object]] = {
        "put": lambda: local.put("t/x", b"escaped"),
        "read": lambda: local.read("t/secret"),
        "exists": lambda: local.exists("t/secret"),
        "list": lambda: local.list("t"),
        "delete_prefix": lambda: local.delete_prefix("t"),
    }
    for name, call in calls.items():
        with pytest.raises(StorageError) as info:
            call()
        assert info.value.code == "invalid_key", name
    assert _files_on_disk(outside) == {"secret"}


def test_symlinked_file_pointing_outside_is_refused(
    local: FsspecStorage, root: Path, outside: Path
) -> None:
    (root / "t").mkdir()
    (root / "t" / "leak").symlink_to(outside / "secret")
    with pytest.raises(StorageError) as info:
        local.read("t/leak")
    assert info.value.code == "invalid_key"


def test_list_skips_entries_escaping_through_symlinks(
    local: FsspecStorage, root: Path, outside: Path
) -> None:
    local.put("t/job1/a", b"x")
    (root / "t" / "job1" / "leak").symlink_to(outside / "secret")
    (root / "t" / "job1" / "dir").symlink_to(outside, target_is_directory=True)
    assert local.list("t") == ["t/job1/a"]


def test_delete_prefix_does_not_follow_symlinks_out(
    local: FsspecStorage, root: Path, outside: Path
) -> None:
    local.put("t/job1/a", b"x")
    (root / "t" / "job1" / "dir").symlink_to(outside, target_is_directory=True)
    assert local.delete_prefix("t/job1") == 1
    assert _files_on_disk(outside) == {"secret"}


def test_no_temp_files_remain_after_puts(local: FsspecStorage, root: Path) -> None:
    keys = {"t/job1/a", "t/job1/b", "t/job2/sub/c"}
    for key in sorted(keys):
        local.put(key, b"one")
        local.put(key, io.BytesIO(b"two"))
    assert _files_on_disk(root) == keys


def test_failed_put_leaves_no_temp_file_on_disk(local: FsspecStorage, root: Path) -> None:
    class Broken(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
            raise OSError("disk on the other side vanished")

    with pytest.raises(StorageError):
        local.put("t/job1/a", io.BufferedReader(Broken()))
    assert _files_on_disk(root) == set()


def test_backend_error_becomes_storage_error(local: FsspecStorage) -> None:
    local.put("t/job1", b"a file where a folder is needed")
    with pytest.raises(StorageError) as info:
        local.put("t/job1/a", b"x")
    assert info.value.code == "storage_error"


def test_check_passes_on_a_writable_root(local: FsspecStorage, root: Path) -> None:
    local.check()
    assert _files_on_disk(root) == set()


def test_check_fails_when_root_is_gone(local: FsspecStorage, root: Path) -> None:
    root.rmdir()
    with pytest.raises(ServiceUnavailable, match="storage unreachable"):
        local.check()


# --------------------------------------------------------------------------------------------------
# Factories and the plugin hook


@pytest.mark.parametrize("url", ["memory://", "memory:", "memory://anything"])
def test_create_storage_memory(url: str) -> None:
    storage = create_storage(url)
    assert isinstance(storage, MemoryStorage)
    storage.put("t/a", b"x")
    assert not create_storage(url).exists("t/a"), "each memory storage is its own"


def test_create_storage_local_path(tmp_path: Path) -> None:
    storage = create_storage(str(tmp_path / "s"))
    assert isinstance(storage, FsspecStorage)
    assert storage.root == os.path.realpath(tmp_path / "s")


def test_create_storage_file_url(tmp_path: Path) -> None:
    storage = create_storage((tmp_path / "s").as_uri(), convkit.Settings())
    assert isinstance(storage, FsspecStorage)
    storage.put("t/a", b"x")
    assert (tmp_path / "s" / "t" / "a").read_bytes() == b"x"


def test_missing_s3fs_gives_install_hint() -> None:
    # A fresh interpreter, so fsspec has not cached the s3 implementation yet.
    code = (
        "import sys; sys.modules['s3fs'] = None\n"
        "from convkit.errors import BackendUnavailable\n"
        "from convkit.backends.storages import create_storage\n"
        "try:\n"
        "    create_storage('s3://bucket/prefix')\n"
        "except BackendUnavailable as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert "pip install 'convkit[s3]'" in out.stdout


def test_hook_register_storages() -> None:
    assert "convkit.backends.storages" in DEFAULT_PLUGINS
    pm = convkit.get_plugin_manager()
    registry = Registry.from_hook_results("storage", pm.hook.register_storages())
    assert registry.names() == ["*", "memory", "s3"]
    assert registry.get("memory").load() is create_memory_storage
    assert registry.get("*").load() is create_fsspec_storage
    assert registry.get("s3").load() is create_fsspec_storage
    assert registry.get("s3").extra == "s3"
    assert registry.get("gcs", fallback="*").load() is create_fsspec_storage
