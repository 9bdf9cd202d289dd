"""The per-principal rate limit: a token bucket per person (``rate`` calls a second, bursts up to
``burst``). Past it the API answers 429 with ``Retry-After``; nothing is done for that call."""
from __future__ import annotations

import math
import threading
import time
from typing import Callable


class RateLimit:
    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic,
                 keep: int = 10_000) -> None:
        self.rate, self.burst, self.clock, self.keep = rate, burst, clock, keep
        self._buckets: dict[str, tuple[float, float]] = {}  # person -> (tokens, when)
        self._lock = threading.Lock()

    def take(self, person: str) -> int:
        """0 when ``person`` may go on (one token taken), else the seconds to wait (at least 1)."""
        now = self.clock()
        with self._lock:
            tokens, when = self._buckets.get(person, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - when) * self.rate)
            if tokens >= 1:
                self._buckets[person] = (tokens - 1, now)
                if len(self._buckets) > self.keep:  # forget the idlest half; they come back full
                    for name in sorted(self._buckets, key=lambda p: self._buckets[p][1])[: self.keep // 2]:
                        del self._buckets[name]
                return 0
            self._buckets[person] = (tokens, now)
            return max(1, math.ceil((1 - tokens) / self.rate))
