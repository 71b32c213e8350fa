"""Local directories and ``s3://`` behind one small interface, with bounded timeouts and retries.

* `Storage(root)` binds a dataset root (a path or ``s3://bucket/prefix``). The s3fs filesystem
  is created lazily inside the process that uses it (s3fs is not fork-safe), and dropped when the
  object is pickled (e.g. shipped to a Ray actor).
* Credentials come from the standard AWS chain (environment, ``~/.aws``); they are never passed
  through configs and never logged. Only URLs appear in messages.
* Every remote call is bounded: botocore connect/read timeouts, botocore "standard" retries
  (5xx, throttling, connection errors), and an outer retry loop with exponential backoff and jitter
  for whatever still escapes (s3fs wraps some errors as OSError). After the last attempt a
  `DataError` names the URL and the last error.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pipelines.errors import DataError

log = logging.getLogger(__name__)
T = TypeVar("T")

_RETRY_CODES = {
    "500",
    "502",
    "503",
    "504",
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "RequestLimitExceeded",
}


@dataclass(frozen=True, kw_only=True)
class StorageOptions:
    """Timeouts and retry policy for object storage (no credentials here, by design)."""

    endpoint_url: str | None = None
    """S3-compatible endpoint; None = AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL or AWS itself."""
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    max_attempts: int = 5
    """Outer attempts per operation (each may include botocore's own retries)."""
    botocore_attempts: int = 2
    backoff_base_s: float = 0.2
    backoff_max_s: float = 5.0


def is_remote(url: str) -> bool:
    return url.startswith("s3://")


def join(root: str, name: str) -> str:
    if not name or name.startswith("/") or ".." in name.split("/"):
        raise DataError(f"refusing object name {name!r} under {root}: must be a relative name")
    return root.rstrip("/") + "/" + name


def _is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, DataError)):
        return False
    if isinstance(exc, (MemoryError, ImportError, KeyboardInterrupt)):
        return False
    code = None
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status is not None and int(status) >= 500:
            return True
    if code is not None:
        return code in _RETRY_CODES
    name = type(exc).__name__
    if any(
        s in name for s in ("Timeout", "Connection", "Endpoint", "ServerDisconnected", "Throttl")
    ):
        return True
    text = str(exc)
    if any(s in text for s in ("503", "500", "502", "504", "SlowDown", "timed out", "Timeout")):
        return True
    return isinstance(exc, (OSError, TimeoutError, ConnectionError))


def with_retries(fn: Callable[[], T], what: str, opts: StorageOptions) -> T:
    """Run `fn` with exponential backoff on transient errors; raise DataError naming `what`."""
    last: BaseException | None = None
    for attempt in range(1, opts.max_attempts + 1):
        try:
            return fn()
        except Exception as e:
            if not _is_retryable(e):
                raise
            last = e
            if attempt == opts.max_attempts:
                break
            delay = min(opts.backoff_max_s, opts.backoff_base_s * 2 ** (attempt - 1))
            delay *= 0.5 + random.random() / 2
            log.warning(
                "storage: %s failed (%s: %s), retry %d/%d in %.2fs",
                what,
                type(e).__name__,
                str(e)[:200],
                attempt,
                opts.max_attempts - 1,
                delay,
            )
            time.sleep(delay)
    raise DataError(
        f"storage: {what} failed after {opts.max_attempts} attempts: "
        f"{type(last).__name__}: {str(last)[:300]}; check the endpoint and network, or raise "
        "data.storage_max_attempts / data.storage_read_timeout_s"
    ) from last


def make_s3fs(opts: StorageOptions) -> Any:
    """A fresh s3fs filesystem with bounded timeouts (create one per process)."""
    import s3fs

    endpoint = (
        opts.endpoint_url
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
    )
    config = {
        "connect_timeout": opts.connect_timeout_s,
        "read_timeout": opts.read_timeout_s,
        "retries": {"max_attempts": opts.botocore_attempts, "mode": "standard"},
    }
    fs = s3fs.S3FileSystem(
        endpoint_url=endpoint,
        config_kwargs=config,
        skip_instance_cache=True,
        use_listings_cache=False,
    )
    fs.retries = 2  # s3fs's own inner loop; the bounded outer loop is `with_retries`
    return fs


class Storage:
    """Read/write named objects under a dataset root (local directory or s3://bucket/prefix)."""

    def __init__(self, root: str, opts: StorageOptions | None = None) -> None:
        self.root = root.rstrip("/") if is_remote(root) else os.path.abspath(root)
        self.opts = opts or StorageOptions()
        self._fs: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"root": self.root, "opts": self.opts, "_fs": None}

    @property
    def remote(self) -> bool:
        return is_remote(self.root)

    @property
    def fs(self) -> Any:
        if self._fs is None:
            if self.remote:
                self._fs = make_s3fs(self.opts)
            else:
                import fsspec

                self._fs = fsspec.filesystem("file")
        return self._fs

    def url(self, name: str) -> str:
        return join(self.root, name)

    def _path(self, name: str) -> str:
        url = self.url(name)
        return url[len("s3://") :] if self.remote else url

    def read(self, name: str, start: int | None = None, end: int | None = None) -> bytes:
        """Bytes of `name`, or of the range [start, end) when given."""
        path = self._path(name)
        what = f"read {self.url(name)}" + (f" [{start}:{end})" if start is not None else "")
        if not self.remote:

            def local() -> bytes:
                with open(path, "rb") as f:
                    if start is not None:
                        f.seek(start)
                        return f.read((end or 0) - start if end is not None else -1)
                    return f.read()

            return with_retries(local, what, self.opts)
        return with_retries(lambda: self.fs.cat_file(path, start=start, end=end), what, self.opts)

    def write(self, name: str, data: bytes) -> None:
        path = self._path(name)
        if not self.remote:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.tmp-{os.getpid()}"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)  # atomic on one filesystem
            return
        with_retries(lambda: self.fs.pipe_file(path, data), f"write {self.url(name)}", self.opts)

    def upload(self, local_path: str, name: str) -> None:
        path = self._path(name)
        if not self.remote:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.replace(local_path, path)
            return
        with_retries(
            lambda: self.fs.put_file(local_path, path), f"upload {self.url(name)}", self.opts
        )

    def size(self, name: str) -> int | None:
        """Size in bytes, or None when the object does not exist."""
        path = self._path(name)

        def go() -> int | None:
            try:
                return int(self.fs.size(path))
            except FileNotFoundError:
                return None

        return with_retries(go, f"stat {self.url(name)}", self.opts)

    def exists(self, name: str) -> bool:
        return self.size(name) is not None

    def list(self) -> list[str]:
        """Names directly under the root ([] when the root does not exist)."""
        base = self._path("x")[:-2]

        def go() -> list[str]:
            try:
                entries = self.fs.ls(base, detail=False)
            except FileNotFoundError:
                return []
            return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in entries)

        return with_retries(go, f"list {self.root}", self.opts)

    def remove(self, name: str) -> None:
        path = self._path(name)

        def go() -> None:
            try:
                self.fs.rm_file(path)
            except FileNotFoundError:
                pass

        with_retries(go, f"remove {self.url(name)}", self.opts)


def options_from_config(cfg: Any) -> StorageOptions:
    """StorageOptions from a `DataConfig` (endpoint, timeouts, attempts)."""
    return StorageOptions(
        endpoint_url=cfg.s3_endpoint_url,
        connect_timeout_s=cfg.storage_connect_timeout_s,
        read_timeout_s=cfg.storage_read_timeout_s,
        max_attempts=cfg.storage_max_attempts,
    )
