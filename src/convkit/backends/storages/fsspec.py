"""Storage on any fsspec URL: a local folder, ``file://``, ``s3://``, ``gs://`` ..."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from typing import IO, Any, cast

import fsspec
from fsspec.implementations.local import LocalFileSystem

from convkit.errors import (
    BackendUnavailable,
    ConfigError,
    ConvKitError,
    InvalidStorageKey,
    ServiceUnavailable,
    StorageError,
)
from convkit.ports import Storage, validate_key
from convkit.settings import Settings

__all__ = ["FsspecStorage", "create_fsspec_storage"]

_CHUNK = 1024 * 1024


def _is_key(rel: str) -> bool:
    """True for a name ``validate_key`` accepts; temp files (hidden names) are not keys."""
    try:
        validate_key(rel)
    except StorageError:
        return False
    return True


class FsspecStorage(Storage):
    """Artifacts in a folder of any fsspec filesystem: a plain local path or an fsspec URL.

    A local root is created if missing and resolved to an absolute real path; every key's real
    path must stay under it, so a symlink planted inside the root cannot lead outside.
    """

    name = "fsspec"

    def __init__(self, url: str, **storage_options: Any) -> None:
        fs, root = fsspec.core.url_to_fs(url, **storage_options)
        self.fs: fsspec.AbstractFileSystem = fs
        self._local = isinstance(fs, LocalFileSystem)
        if self._local:
            root = os.path.realpath(root)
            try:
                os.makedirs(root, exist_ok=True)
            except OSError as exc:
                raise StorageError(f"cannot create storage folder {root!r}: {exc}") from exc
        #: The root folder, without protocol or trailing slash.
        self.root: str = root.rstrip("/")

    def __repr__(self) -> str:
        return f"FsspecStorage({self.fs.unstrip_protocol(self.root)!r})"

    # -- helpers ------------------------------------------------------------------------------
    def _path(self, key: str) -> str:
        path = f"{self.root}/{key}"
        if self._local and not self._inside_root(path):
            raise InvalidStorageKey(f"storage key {key!r} leaves the storage root")
        return path

    def _inside_root(self, path: str) -> bool:
        real = os.path.realpath(path)
        return os.path.commonpath([self.root, real]) == self.root

    def _rel(self, path: str) -> str:
        return path[len(self.root) + 1 :]

    @contextlib.contextmanager
    def _errors(self, op: str, key: str) -> Iterator[None]:
        try:
            yield
        except ConvKitError:
            raise
        except Exception as exc:
            raise StorageError(f"storage {op} of {key!r} failed: {exc}") from exc

    def _files_under(self, prefix: str) -> list[str]:
        """Every file under ``prefix/`` (temp files included), as relative names."""
        base = self._path(prefix)
        # find() on a path that is a file returns that file, and an object store lists by
        # string prefix (t/job1 would match t/job10), so keep only what is inside base/.
        found = cast(list[str], self.fs.find(base))
        rels = [self._rel(p) for p in found if p.startswith(base + "/")]
        if self._local:
            rels = [r for r in rels if self._inside_root(f"{self.root}/{r}")]
        return rels

    # -- primitives ---------------------------------------------------------------------------
    def _put(self, key: str, src: IO[bytes]) -> int:
        path = self._path(key)
        parent, _, base = path.rpartition("/")
        # A hidden name is never a valid key, so list() cannot show it and no key can clash.
        tmp = f"{parent}/.{base}.tmp-{uuid.uuid4().hex}"
        size = 0
        with self._errors("put", key):
            try:
                if self._local:
                    os.makedirs(parent, exist_ok=True)  # object stores have no folders
                with self.fs.open(tmp, "wb") as dst:
                    while chunk := src.read(_CHUNK):
                        dst.write(chunk)
                        size += len(chunk)
                if self._local:
                    # os.replace is atomic and overwrites on every OS; fsspec's mv is
                    # shutil.move, which refuses to overwrite on Windows.
                    os.replace(tmp, path)
                else:
                    self.fs.mv(tmp, path)
            except BaseException:
                with contextlib.suppress(Exception):
                    self.fs.rm(tmp)
                raise
        return size

    def _open(self, key: str) -> IO[bytes]:
        path = self._path(key)
        try:
            return cast(IO[bytes], self.fs.open(path, "rb"))
        except IsADirectoryError:
            # A folder is a prefix of keys, not a key.
            raise FileNotFoundError(key) from None
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise StorageError(f"storage open of {key!r} failed: {exc}") from exc

    def _exists(self, key: str) -> bool:
        path = self._path(key)
        with self._errors("exists", key):
            return bool(self.fs.isfile(path))

    def _list(self, prefix: str) -> list[str]:
        with self._errors("list", prefix):
            return sorted(r for r in self._files_under(prefix) if _is_key(r))

    def _delete_prefix(self, prefix: str) -> int:
        base = self._path(prefix)
        with self._errors("delete", prefix):
            files = self._files_under(prefix)
            count = sum(1 for r in files if _is_key(r))
            if self._local:
                if os.path.isdir(base):
                    shutil.rmtree(base)
            elif files:
                self.fs.rm([f"{self.root}/{r}" for r in files])
        return count

    def check(self) -> None:
        """Raise ServiceUnavailable unless the root can be listed and written."""
        probe = f"{self.root}/.convkit-check-{uuid.uuid4().hex}"
        try:
            self.fs.ls(self.root, detail=False)
            self.fs.pipe_file(probe, b"")
            self.fs.rm(probe)
        except Exception as exc:
            raise ServiceUnavailable(f"storage unreachable: {exc}") from exc


# --------------------------------------------------------------------------------------------------
# Factory


def create_fsspec_storage(url: str, settings: Settings | None = None) -> FsspecStorage:
    """Factory for a local path or any fsspec URL; a missing fsspec implementation (s3fs not
    installed) becomes :class:`~convkit.errors.BackendUnavailable` with the install hint."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    try:
        return FsspecStorage(url)
    except ImportError as exc:
        hint = "pip install 'convkit[s3]'" if scheme in ("s3", "s3a") else str(exc)
        raise BackendUnavailable(f"STORAGE_URL {url!r} needs a missing package: {hint}") from exc
    except ValueError as exc:
        # fsspec answers an unknown protocol with ValueError("Protocol not known: ...").
        raise ConfigError(f"STORAGE_URL {url!r} is not usable: {exc}") from exc
