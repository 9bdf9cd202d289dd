"""How a simulator behaves: ``SimulatorOptions`` (authentication, rate limit,
persistence, seed; fixed at construction) and ``Faults`` (the failures to inject,
changed at run time).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

@dataclass
class SimulatorOptions:
    """How the simulator authenticates, limits, persists and seeds."""

    user: str = "admin"
    password: str = "admin"
    oauth_clients: dict[str, str] = field(default_factory=lambda: {"jit": "jit-secret"})  # id -> secret
    rate_limit: int | None = None        # max requests per rate_window seconds per user; None = no limit
    rate_window: float = 1.0
    latency_ms: int = 0                  # initial Faults.latency_ms
    data_file: Path | None = None        # loaded at start when it exists; saved after every write
    seed: str | None = None              # "demo": load seed.demo(clock()) when there is no data file yet
    custom_fields: dict[str, tuple[str, ...]] = field(default_factory=dict)  # table -> u_ fields its admin
    # created (besides those of the schema); a write of any other field is ignored, as on an instance
    tls_cert: Path | None = None         # serve https with this certificate chain (PEM)...
    tls_key: Path | None = None          # ...and its key (PEM); both or neither
    clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)


@dataclass
class Faults:
    """Failures to inject into API requests (not into /sim/admin/* or /oauth_token.do).

    Counters count down as they fire. Set attributes directly, or through
    ``POST /sim/admin/faults``; :meth:`take` is the atomic check-and-decrement.
    """

    latency_ms: int = 0              # sleep before answering every API request
    fail_next: int = 0               # answer 500 "Internal Server Error"
    drop_next: int = 0               # read the request, close the socket, answer nothing
    timeout_next: int = 0            # sleep timeout_s, then answer normally
    timeout_s: float = 30.0
    down: bool = False               # drop every API request
    fail_after_write_next: int = 0   # apply a successful write, then drop the connection
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    def take(self, name: str) -> bool:
        """Decrement counter ``name`` if it is positive; return whether it fired."""
        with self._lock:
            if getattr(self, name) > 0:
                setattr(self, name, getattr(self, name) - 1)
                return True
            return False

    def snapshot(self) -> dict[str, Any]:
        """The current values as a JSON-able dict."""
        with self._lock:
            return {f.name: getattr(self, f.name) for f in fields(self) if f.init}

    def update(self, values: Mapping[str, Any]) -> None:
        """Set several faults at once; raise ValueError (changing nothing) on a bad name or value."""
        types = {f.name: f.type for f in fields(self) if f.init}
        clean: dict[str, Any] = {}
        for name, value in values.items():
            if name not in types:
                raise ValueError(f"unknown fault {name!r}; known: {', '.join(types)}")
            if name == "down":
                if not isinstance(value, bool):
                    raise ValueError("down must be true or false")
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a non-negative number")
            elif name != "timeout_s" and value != int(value):
                raise ValueError(f"{name} must be an integer")
            clean[name] = value if name in ("down", "timeout_s") else int(value)
        with self._lock:
            for name, value in clean.items():
                setattr(self, name, value)

    def clear(self) -> None:
        """Back to no faults at all (latency 0, timeout_s 30)."""
        self.update({f.name: f.default for f in fields(self) if f.init})
