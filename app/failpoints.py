"""Named crash points for fault tests: ``JIT_FAILPOINTS=apply.after_backend`` makes the
process kill itself with SIGKILL when it reaches that step, exactly as a power cut would.

Names: apply.before_backend, apply.after_backend, revoke.before_backend, revoke.after_backend.
Unset in production; reading one environment variable costs nothing worth measuring.
"""
from __future__ import annotations

import os
import signal


def hit(name: str) -> None:
    wanted = os.environ.get("JIT_FAILPOINTS")
    if wanted and name in wanted.split(","):
        os.kill(os.getpid(), signal.SIGKILL)
