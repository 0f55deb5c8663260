"""Single-flight: identical in-flight requests wait for the first one instead of re-running it.

``SingleFlight.hold(key)`` serialises the holders of one key; the second caller, once it gets
the key, finds the first caller's result in the map cache. Keys that nobody holds are dropped.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Hashable, Iterator


class SingleFlight:
    """One lock per key in use, created on demand and dropped by its last holder."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[Hashable, tuple[threading.Lock, int]] = {}

    @contextlib.contextmanager
    def hold(self, key: Hashable) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        with self._guard:
            return len(self._locks)
