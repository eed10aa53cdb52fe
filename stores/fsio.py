"""Filesystem plumbing: resolve a store URL, keep paths inside the root, write files atomically; a free port for
a local server (an S3 for a store, Prefect, Label Studio).

Atomic publish, per backend:
- local disk: the bytes go to `_tmp-<uuid>-<name>` in the final directory, are fsynced, then `os.replace`d onto
  the final name. rename(2) within one directory is atomic: a reader sees the old file or the new one.
- s3: `mv` is a server-side copy + delete. A PUT/COPY of one object is atomic (readers get the whole old object or
  the whole new one, never a mix), so the final key only ever holds complete files; a crash can leave a `_tmp-`
  object behind, which dataset discovery skips.
- memory: a dict in one process; copy + delete under the GIL, there is no other process to see the middle.
Temp names start with `_` because pyarrow's dataset discovery (and so pandas.read_parquet) skips such files.
"""

import os
import posixpath
import re
import socket
import uuid

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from .errors import CorruptFileError, PathEscapeError, StoreError, UnknownProtocolError
from .schemas import check_file_schema

# Keys become directory and file names: keep them to a portable alphabet so no key can climb out of the root.
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,199}$")
TEMP_PREFIX = "_tmp-"
_UNKNOWN_PROTOCOL = re.compile(r"^Protocol not known: (.+)$")


def check_key(name: str, value) -> str:
    """Return `value` as str if it is a safe path component (letters, digits, . _ + -), else PathEscapeError."""
    text = str(value)
    if not _KEY.match(text) or ".." in text:
        raise PathEscapeError(f"{name}={value!r} is not a valid key: use letters, digits and . _ + - only")
    return text


def resolve_filesystem(
    url: str, storage_options: dict | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, root path without protocol) for a URL or plain path; touches nothing on the filesystem."""
    if "://" not in url:
        url = "file://" + os.path.abspath(url)
    fs, root = url_to_fs(url, **(storage_options or {}))
    root = root.rstrip("/")
    if isinstance(fs, LocalFileSystem):
        root = os.path.abspath(root)
    elif fs.protocol in ("memory",) or "memory" in fs.protocol:
        root = "/" + root.lstrip("/")  # the memory filesystem needs /-rooted paths
    return fs, root


def url_to_fs(url: str, **storage_options) -> tuple[fsspec.AbstractFileSystem, str]:
    """fsspec.core.url_to_fs with errors a user can act on: UnknownProtocolError for a protocol fsspec does not
    know, listing the ones it does; StoreError naming the package a known protocol needs (s3 without s3fs)."""
    try:
        return fsspec.core.url_to_fs(url, **storage_options)
    except ImportError as exc:  # a known protocol whose implementation is not installed
        raise StoreError(f"{url}: {exc}") from exc
    except ValueError as exc:
        unknown = _UNKNOWN_PROTOCOL.match(str(exc))  # fsspec's own words; any other ValueError is not ours
        if unknown is None:
            raise
        known = ", ".join(fsspec.available_protocols())
        raise UnknownProtocolError(
            f"unknown protocol {unknown.group(1)!r} in {url}; known protocols: {known}"
        ) from exc


def open_filesystem(
    url: str, storage_options: dict | None = None, create: bool = True
) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, root path without protocol) for a URL or plain path; with ``create`` the root is made if
    missing (a reader passes create=False, so a mistyped URL leaves no folder behind)."""
    fs, root = resolve_filesystem(url, storage_options)
    if create:
        fs.makedirs(root, exist_ok=True)
    return fs, root


def join_inside(root: str, *parts: str) -> str:
    """root/parts... normalised; PathEscapeError if the result is not inside root."""
    joined = posixpath.normpath(posixpath.join(root, *parts))
    if joined != root and not joined.startswith(root.rstrip("/") + "/"):
        raise PathEscapeError(f"path {'/'.join(parts)!r} escapes the store root {root!r}")
    return joined


def is_local(fs) -> bool:
    return isinstance(fs, LocalFileSystem)


def table_bytes(table: pa.Table, compression: str = "zstd", **options) -> bytes:
    """Serialise one Arrow table to Parquet bytes (zstd unless `compression` names another codec)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression=compression, **options)
    return sink.getvalue().to_pybytes()


def atomic_write(fs, path: str, data: bytes) -> str:
    """Publish `data` at `path` so that readers see either the previous file or all of `data`."""
    directory, name = posixpath.split(path)
    tmp = posixpath.join(directory, f"{TEMP_PREFIX}{uuid.uuid4().hex}-{name}")
    if is_local(fs):
        os.makedirs(directory, exist_ok=True)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())  # the rename must not reach disk before the bytes do
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return path
    fs.makedirs(directory, exist_ok=True)
    fs.pipe_file(tmp, data)
    try:
        fs.mv(tmp, path)  # s3: server-side copy (atomic per object) then delete of the temp key
    finally:
        if fs.exists(tmp):
            fs.rm(tmp)
    fs.invalidate_cache(directory)
    return path


def read_parquet_file(
    fs, path: str, table: str, columns: list[str] | None = None, check: bool = True
) -> pa.Table:
    """Read one file of `table`, checking its schema; CorruptFileError/SchemaMismatchError name the file.

    Only the footer and the requested columns are fetched (range reads on s3), not the whole file.
    check=False skips the schema check (for upgrading files of an older schema version).
    """
    try:
        if is_local(fs):  # pyarrow's own local reader: no Python file object in the hot path
            return _read_checked(pq.ParquetFile(path), table, path, columns, check)
        with fs.open(path, "rb") as f:
            return _read_checked(pq.ParquetFile(f), table, path, columns, check)
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise CorruptFileError(f"{path}: cannot read Parquet file of table {table!r}: {e}") from e


def _read_checked(pf: pq.ParquetFile, table: str, path: str, columns, check: bool) -> pa.Table:
    if check:
        check_file_schema(pf.schema_arrow, table, path)
    return pf.read(columns=columns)


def list_data_files(fs, directory: str) -> list[str]:
    """All Parquet files below `directory`, skipping temp/hidden names like pyarrow's discovery does."""
    fs.invalidate_cache(directory)  # another process may have written since this fs listed (s3fs caches)
    if not fs.exists(directory):
        return []
    out = []
    for path in sorted(fs.find(directory)):
        rel = path[len(directory.rstrip("/")) + 1 :] if path.startswith(directory) else path
        if any(part.startswith(("_", ".")) for part in rel.split("/")):
            continue
        if path.endswith(".parquet"):
            out.append(path)
    return out


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now, for a local server (scripts/s3_server.py's S3,
    scripts/prefect_server.py's Prefect, Label Studio in tests). Here, in a package whose import changes nothing,
    so that the server scripts need neither the tasks package's Prefect defaults nor a sys.path of their own."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
