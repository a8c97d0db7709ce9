"""Token buckets in the server's memory, one per name (a remote address), for refused requests.

(Per-key rate limits live in the database with the quota: `mea.serve.keys.KeyStore.admit`.)
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class TokenBuckets:
    """Buckets refilled at `rate` per second up to `capacity`; the least recently used are forgotten
    past `max_names` (a forgotten name starts full again, which only errs towards serving)."""

    def __init__(self, rate: float, capacity: float, max_names: int = 10_000) -> None:
        self.rate = rate
        self.capacity = capacity
        self.max_names = max_names
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def acquire(self, name: str, amount: float) -> float:
        """Take `amount` tokens; returns 0 on success, else the seconds to wait before retrying."""
        now = time.monotonic()
        with self._lock:
            bucket = self._buckets.pop(name, None) or _Bucket(self.capacity, now)
            self._buckets[name] = bucket
            if len(self._buckets) > self.max_names:
                self._buckets.popitem(last=False)
            bucket.tokens = min(self.capacity, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
            if bucket.tokens >= amount:
                bucket.tokens -= amount
                return 0.0
            return (amount - bucket.tokens) / self.rate

    @staticmethod
    def retry_after(seconds: float) -> str:
        """A Retry-After header value: whole seconds, at least one."""
        return str(max(1, math.ceil(seconds)))
