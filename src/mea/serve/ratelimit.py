"""Per-key rate limits in images per second: a token bucket per key, in the server's memory."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets refilled at `rate` images per second, holding at most `capacity` images.

    The capacity is at least one full batch, so that a key limited below the maximum batch size can
    still send one.
    """

    def __init__(self, max_batch: int) -> None:
        self.max_batch = max_batch
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def acquire(self, key_id: str, rate: float, images: int) -> float:
        """Take `images` tokens; returns 0 on success, else the seconds to wait before retrying."""
        capacity = max(rate, float(self.max_batch))
        now = time.monotonic()
        with self._lock:
            bucket = self._buckets.setdefault(key_id, _Bucket(capacity, now))
            bucket.tokens = min(capacity, bucket.tokens + (now - bucket.updated) * rate)
            bucket.updated = now
            if bucket.tokens >= images:
                bucket.tokens -= images
                return 0.0
            return (images - bucket.tokens) / rate

    @staticmethod
    def retry_after(seconds: float) -> str:
        """A Retry-After header value: whole seconds, at least one."""
        return str(max(1, math.ceil(seconds)))
