"""A bounded LRU cache of computed maps, so a new threshold or head choice never re-runs the model.

Keys hold everything the model's output depends on: the model id and its file's identity (path,
size, mtime: an overwritten checkpoint is a new key), a hash of the image bytes, ``image_size``,
``resize``, the block and the query patch. Values report their size in bytes; the cache keeps at
most ``max_entries`` values and ``max_bytes`` bytes, evicting the least recently used first.

Why not ``cachetools.LRUCache(maxsize, getsizeof=)``: it has one bound, and this cache needs two
(entries and bytes), and a value is stored again when its overlay pictures are added, so its size
changes after the first store. Hits and misses are counted by ``dino_map_cache_total``.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, Protocol, TypeVar


class Sized(Protocol):
    @property
    def nbytes(self) -> int: ...


V = TypeVar("V", bound=Sized)


def image_digest(data: bytes) -> str:
    """The cache's identity of an uploaded image: SHA-256 of its bytes."""
    return hashlib.sha256(data).hexdigest()


class MapCache(Generic[V]):
    """Thread-safe LRU bounded in entries and bytes."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, tuple[V, int]] = (
            OrderedDict()
        )  # value, its size when stored
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable, usable: Callable[[V], bool] | None = None) -> V | None:
        """The value for ``key`` (now most recently used), or None.

        A value that ``usable`` rejects (it lacks something this request needs) is a miss.
        """
        with self._lock:
            item = self._items.get(key)
            if item is None or (usable is not None and not usable(item[0])):
                return None
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: Hashable, value: V) -> None:
        """Store ``value`` (again, after it grew); one over the whole byte budget is not stored."""
        size = value.nbytes
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if self.max_entries < 1 or size > self.max_bytes:
                return
            self._items[key] = (value, size)
            self._bytes += size
            while len(self._items) > self.max_entries or self._bytes > self.max_bytes:
                _, (_, evicted) = self._items.popitem(last=False)
                self._bytes -= evicted

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._bytes
