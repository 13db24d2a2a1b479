"""Remote files (`s3://`, `gs://`, `http(s)://`, ... through fsspec): the one place that opens a URL for reading.

A video, manifest or shard named by a URL is read with range requests through a bounded read-ahead buffer
(`REMOTE_BLOCK_BYTES` per open file), never downloaded whole into memory: PyAV, tarfile and Pillow read the
returned file object as they would a local file, seeking where they need to. Credentials and endpoints come from
the file system's usual configuration (for S3 through s3fs: `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`). fsspec loads a protocol's library (s3fs, ...) on first use.
"""

from __future__ import annotations

import posixpath
from typing import Any, BinaryIO

REMOTE_BLOCK_BYTES = 4 * 2**20  # read-ahead per open remote file: memory stays bounded whatever the file's size


def is_url(uri: str) -> bool:
    """A remote URL (a `file://` URL is a local path)."""
    return "://" in uri and not uri.startswith("file://")


def _fs(url: str) -> tuple[Any, str]:
    import fsspec

    try:  # no cached listings: an object another process wrote since is always seen
        return fsspec.core.url_to_fs(url, use_listings_cache=False)
    except TypeError:
        return fsspec.core.url_to_fs(url)


def open_remote(url: str, *, block_size: int = REMOTE_BLOCK_BYTES) -> BinaryIO:
    """A seekable binary file over `url`, read by range requests in blocks of `block_size` bytes (read-ahead)."""
    fs, path = _fs(url)
    try:
        return fs.open(path, "rb", block_size=block_size, cache_type="readahead")
    except TypeError:  # a file system without these options (e.g. memory://)
        return fs.open(path, "rb")


def remote_info(url: str) -> dict[str, Any]:
    """`{"type": "file" | "directory", "size": bytes, ...}` of a URL; FileNotFoundError when there is none."""
    fs, path = _fs(url)
    return fs.info(path)


def remote_glob(pattern: str) -> list[str]:
    """The URLs (same protocol as `pattern`) of the files a glob pattern names, sorted."""
    fs, path = _fs(pattern)
    matches = fs.glob(path) if any(char in path for char in "*?[") else ([path] if fs.isfile(path) else [])
    return sorted(fs.unstrip_protocol(match) for match in matches)


def join_url(base: str, relative: str) -> str:
    """`relative` joined to the URL folder `base`; ValueError when it climbs out of `base` (`..`, an absolute path)."""
    normal = posixpath.normpath(relative)
    if relative.startswith("/") or normal == ".." or normal.startswith("../"):
        raise ValueError(f"{relative!r} leaves {base}")
    return f"{base.rstrip('/')}/{normal}"
