"""Storage on any fsspec URL: a local folder, ``file://``, ``s3://``, ``gs://`` ..."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import uuid
from collections.abc import Iterator
from typing import IO, Any, cast

import fsspec
from fsspec.implementations.local import LocalFileSystem
from fsspec.spec import AbstractBufferedFile

from convkit.errors import (
    BackendUnavailable,
    ConfigError,
    ConvKitError,
    InvalidStorageKey,
    ServiceUnavailable,
    StorageError,
)
from convkit.ports import Storage, validate_key
from convkit.settings import Settings, redact_url

__all__ = ["FsspecStorage", "LocalFolderStorage", "SigningFsspecStorage", "create_fsspec_storage"]

_CHUNK = 1024 * 1024
_PROBE = b"convkit readiness probe"
#: fsspec protocols whose uploads appear whole once complete (a reader never sees a part).
_WHOLE_OBJECT_PROTOCOLS = frozenset({"s3", "s3a"})


def _is_key(rel: str) -> bool:
    """True for a name ``validate_key`` accepts; temp files (hidden names) are not keys."""
    try:
        validate_key(rel)
    except StorageError:
        return False
    return True


class FsspecStorage(Storage):
    """Artifacts in a folder of any fsspec filesystem: a plain local path or an fsspec URL.

    ``storage_options`` go to the filesystem as they are (s3fs: ``endpoint_url``, ``key``,
    ``secret``, ``client_kwargs``, ``default_block_size`` ...). Like :class:`pathlib.Path`, the
    constructor returns the subclass the filesystem calls for, so capabilities stay class
    attributes: :class:`LocalFolderStorage` (``atomic_move``) for a local folder,
    :class:`SigningFsspecStorage` (``signed_urls``) where the filesystem presigns URLs (s3fs).

    A local root is created if missing and resolved to an absolute real path; every key's real
    path must stay under it, so a symlink planted inside the root cannot lead outside.
    """

    name = "fsspec"

    def __new__(cls, url: str, **storage_options: Any) -> FsspecStorage:
        if cls is FsspecStorage:
            # fsspec caches filesystem instances: __init__ gets this same one back.
            fs = fsspec.core.url_to_fs(url, **storage_options)[0]
            if isinstance(fs, LocalFileSystem):
                cls = LocalFolderStorage
            elif type(fs).sign is not fsspec.AbstractFileSystem.sign:
                cls = SigningFsspecStorage
        return super().__new__(cls)

    def __init__(self, url: str, **storage_options: Any) -> None:
        fs, root = fsspec.core.url_to_fs(url, **storage_options)
        self.fs: fsspec.AbstractFileSystem = fs
        self._local = isinstance(fs, LocalFileSystem)
        protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
        # An object store shows an upload whole once it completes, so a put writes its key
        # directly; elsewhere it writes a temp name and moves it (S3's move is copy + delete).
        self._whole_object_writes = bool(protocols & _WHOLE_OBJECT_PROTOCOLS)
        if self._local:
            root = os.path.realpath(root)
            try:
                os.makedirs(root, exist_ok=True)
            except OSError as exc:
                raise StorageError(f"cannot create storage folder {root!r}: {exc}") from exc
        #: The root folder, without protocol or trailing slash.
        self.root: str = root.rstrip("/")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({redact_url(self.fs.unstrip_protocol(self.root))!r})"

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
        with self._errors("put", key):
            if self._whole_object_writes:
                return _write(self.fs, path, src)
            parent, _, base = path.rpartition("/")
            # A hidden name is never a valid key, so list() cannot show it and no key can clash.
            tmp = f"{parent}/.{base}.tmp-{uuid.uuid4().hex}"
            try:
                if self._local:
                    os.makedirs(parent, exist_ok=True)  # object stores have no folders
                size = _write(self.fs, tmp, src)
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
            fh = self.fs.open(path, "rb")
            # s3fs opens a "folder" (a prefix of keys) without complaint; it is not a key.
            if isinstance(fh, AbstractBufferedFile) and fh.details.get("type") == "directory":
                fh.close()
                raise IsADirectoryError(path)
            return cast(IO[bytes], fh)
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

    def _delete(self, key: str) -> bool:
        path = self._path(key)
        with self._errors("delete", key):
            if not self.fs.isfile(path):
                return False
            self.fs.rm_file(path)
        return True

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
        """Write, read back and delete a probe object under the root; raise ServiceUnavailable
        if a step fails. Passes on an empty prefix (an object store has no folder to list)."""
        probe = f"{self.root}/.convkit-check-{uuid.uuid4().hex}"
        try:
            self.fs.pipe_file(probe, _PROBE)
            if self.fs.cat_file(probe) != _PROBE:
                raise StorageError("the probe object read back different bytes")
            self.fs.rm_file(probe)
        except Exception as exc:
            raise ServiceUnavailable(f"storage unreachable: {exc or type(exc).__name__}") from exc


class LocalFolderStorage(FsspecStorage):
    """A local folder: a stored file is renamed atomically (rename(2))."""

    name = "local folder"
    atomic_move = True


class SigningFsspecStorage(FsspecStorage):
    """An object store that presigns URLs (S3 through s3fs), so results can be redirected to."""

    signed_urls = True

    def _signed_url(self, key: str, expires_s: float) -> str:
        with self._errors("signing", key):
            return str(self.fs.sign(self._path(key), expiration=max(1, math.ceil(expires_s))))


def _write(fs: fsspec.AbstractFileSystem, path: str, src: IO[bytes]) -> int:
    """Copy ``src`` into a new file at ``path``; return the byte count. On any failure nothing
    is committed: s3fs uploads a large file in parts, and a failure aborts that multipart
    upload, so no part is left behind (a ``with`` block would commit the partial bytes)."""
    dst = fs.open(path, "wb")
    size = 0
    try:
        while chunk := src.read(_CHUNK):
            dst.write(chunk)
            size += len(chunk)
        dst.close()
    except BaseException:
        if isinstance(dst, AbstractBufferedFile):
            with contextlib.suppress(Exception):
                dst.discard()  # s3fs: abort_multipart_upload
            # fsspec's own mark of a dead file: close() (here or in __del__) then commits nothing.
            dst.closed = True
        else:
            with contextlib.suppress(Exception):
                dst.close()
        raise
    return size


# --------------------------------------------------------------------------------------------------
# Factory


def create_fsspec_storage(url: str, settings: Settings | None = None) -> FsspecStorage:
    """Factory for a local path or any fsspec URL, the filesystem built with
    ``settings.storage_options`` (STORAGE_OPTIONS).

    :raises BackendUnavailable: the fsspec implementation is missing (s3fs), with the hint.
    :raises ConfigError: an unknown protocol, options the filesystem refuses, or credentials in
        an ``s3://`` URL (s3fs would read them as part of the bucket name).
    """
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    shown = redact_url(url)
    if scheme in ("s3", "s3a") and shown != url:
        raise ConfigError(
            f"STORAGE_URL {shown!r} carries credentials; put them in STORAGE_OPTIONS "
            "(key, secret) or the AWS variables"
        )
    options = settings.storage_options if settings is not None else {}
    try:
        return FsspecStorage(url, **options)
    except ImportError as exc:
        hint = "pip install 'convkit[s3]'" if scheme in ("s3", "s3a") else str(exc)
        raise BackendUnavailable(f"STORAGE_URL {shown!r} needs a missing package: {hint}") from exc
    except TypeError as exc:
        # Names only: the values may be credentials.
        raise ConfigError(
            f"STORAGE_OPTIONS are not accepted by the {scheme or 'file'} storage "
            f"(given: {', '.join(sorted(options)) or 'none'})"
        ) from exc
    except ValueError as exc:
        # fsspec answers an unknown protocol with ValueError("Protocol not known: ...").
        raise ConfigError(f"STORAGE_URL {shown!r} is not usable: {exc}") from exc
