"""Actions for pool tests. They live in an importable module (not in a test function)
because spawned worker processes must be able to import them."""
from __future__ import annotations

import time
from typing import Dict

from hostops.connection import CommandOutcome


class SleepAction:
    """Sleeps a per-host number of seconds, then succeeds with the host's name as output."""

    timeout = None
    sudo = False
    needs_connection = True

    def __init__(self, seconds: Dict[str, float]):
        self.seconds = seconds

    def describe(self) -> str:
        return "sleep by host"

    def run(self, conn, target, ctx, on_output):
        time.sleep(self.seconds.get(target.name, 0.0))
        return CommandOutcome(0, target.name.encode(), b"")
