"""Rendered responses kept while the data they were read from is unchanged.

Every API read runs in one REPEATABLE READ transaction whose first statement takes its snapshot,
`pg_current_snapshot()`: the set of committed transactions it sees. Equal snapshots see equal
data, so a body rendered under one snapshot answers any later request made under the same one,
and any commit (an ingest, a job's edges and forest) makes every entry miss. Nothing is ever
served stale; dashboards polling the same trees cost one short query each.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict


class ResponseCache:
    """A thread-safe LRU of rendered bodies by request key, bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[str, bytes]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: str, snapshot: str) -> bytes | None:
        """The body stored for `key` under `snapshot`, if any."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[0] != snapshot:
                return None
            self._entries.move_to_end(key)
            return entry[1]

    def put(self, key: str, snapshot: str, body: bytes) -> None:
        """Keep `body` (bodies over 1/16 of the budget are not kept)."""
        if len(body) > self.max_bytes // 16:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= len(old[1])
            self._entries[key] = (snapshot, body)
            self._bytes += len(body)
            while self._bytes > self.max_bytes:
                _key, (_snapshot, evicted) = self._entries.popitem(last=False)
                self._bytes -= len(evicted)

    def __len__(self) -> int:
        return len(self._entries)


def etag(key: str, snapshot: str) -> str:
    """A strong validator of the response to `key` under `snapshot`."""
    return '"' + hashlib.blake2b(f"{snapshot} {key}".encode(), digest_size=12).hexdigest() + '"'
