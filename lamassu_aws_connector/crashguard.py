"""Crash guard: a message that kills the connector every time it is handled must not crash-loop it.

RabbitMQ redelivers whatever a dead process held, so a message that makes the process die (the
kernel's OOM killer, a crash in a native library) comes back to the next process, forever. Classic
queues count nothing across deliveries; only the ``redelivered`` flag says "this one was out before".

So a redelivered delivery is handled alone (one at a time, while first deliveries flow as usual),
and while it is handled its content hash is marked *in progress* in a small state file. If the
process dies then, the next process finds the mark at start and counts a strike against that
content; at ``amqp.redelivery_limit`` strikes it is dead-lettered (``redelivery_limit``) without
being handled again. Innocent messages redelivered with it are never in progress at the moment of
death, so they collect no strikes. With a quorum queue RabbitMQ counts for us: an
``x-delivery-count`` beyond the limit is dead-lettered the same way.

The file lives in ``amqp.state_dir`` (an emptyDir in Kubernetes survives container restarts). Each
process holds an ``flock`` on its own slot file, so replicas on one host never share one, and a
restarted process takes over the slot its dead predecessor released. If the directory cannot be
written, the guard is off and says so once: it must never be why the connector stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson

from .logs import get_logger
from .metrics import Metrics

log = get_logger(__name__)

_MAX_REMEMBERED = 1000
_MAX_SLOTS = 64


def content_key(body: bytes, routing_key: str | None) -> str:
    return hashlib.sha256(body + b"\x00" + (routing_key or "").encode()).hexdigest()[:32]


class CrashGuard:
    def __init__(self, state_dir: str, queue: str, limit: int, metrics: Metrics) -> None:
        self.limit = limit
        self._metrics = metrics
        self._dir = Path(state_dir)
        self._name = re.sub(r"[^A-Za-z0-9_.-]", "_", queue)[:100]
        self._fd: int | None = None
        self.path: Path | None = None
        self._strikes: dict[str, int] = {}
        self._in_progress: set[str] = set()
        self._alone = asyncio.Lock()

    @property
    def enabled(self) -> bool:
        return self._fd is not None

    def open(self) -> None:
        """Take a free slot file and count a strike for what was in progress when its owner died."""
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
            for slot in range(_MAX_SLOTS):
                path = self._dir / f"crash-guard-{self._name}.{slot}.json"
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                self._fd, self.path = fd, path
                break
            else:
                raise OSError(f"all {_MAX_SLOTS} slot files in {self._dir} are held by live processes")
        except OSError as exc:
            log.warning("crashguard.disabled", state_dir=str(self._dir), error=str(exc))
            return
        previous = self._read()
        self._strikes = {str(k): int(v) for k, v in previous.get("strikes", {}).items()}
        for key in previous.get("in_progress", []):
            self._strikes[str(key)] = self._strikes.get(str(key), 0) + 1
            self._metrics.redelivery_suspects.inc()
            log.warning(
                "crashguard.strike",
                content_key=key,
                strikes=self._strikes[str(key)],
                limit=self.limit,
                reason="the previous process died while handling this message",
            )
        self._write()

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def _read(self) -> dict[str, Any]:
        assert self._fd is not None
        try:
            raw = os.pread(self._fd, 4 * 1024 * 1024, 0)
            data = orjson.loads(raw) if raw.strip() else {}
            return data if isinstance(data, dict) else {}
        except (OSError, orjson.JSONDecodeError):
            return {}  # a torn write from a process killed mid-write: start over

    def _write(self) -> None:
        if self._fd is None:
            return
        while len(self._strikes) > _MAX_REMEMBERED:
            self._strikes.pop(next(iter(self._strikes)))
        data = orjson.dumps({"strikes": self._strikes, "in_progress": sorted(self._in_progress)})
        try:
            os.pwrite(self._fd, data, 0)
            os.ftruncate(self._fd, len(data))
        except OSError as exc:
            log.warning("crashguard.write_failed", path=str(self.path), error=str(exc))

    def strikes(self, key: str) -> int:
        return self._strikes.get(key, 0)

    def forget(self, key: str) -> None:
        if self._strikes.pop(key, None) is not None:
            self._write()

    @contextlib.asynccontextmanager
    async def handling(self, key: str) -> AsyncIterator[None]:
        """Handle a redelivered message alone, marked in progress in the state file meanwhile."""
        async with self._alone:
            self._in_progress.add(key)
            self._write()
            try:
                yield
            finally:
                self._in_progress.discard(key)
                self._strikes.pop(key, None)  # it was handled to the end: whatever killed us, not this
                self._write()
