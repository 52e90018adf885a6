"""How many SSH handshakes a worker runs at once: as few as keep the servers busy.

Every handshake in flight is two threads (ours and paramiko's transport thread) that share
one interpreter lock. When handshakes wait on the network (a fleet 50 ms away), hundreds
in flight cost little and are what makes a run fast; when they wait on CPU (the client's
or the servers'), each one more only adds lock hand-offs and context switches, and
handshakes that all advance slowly reach the connect timeout together.

So the limit follows the handshakes' own duration, the way TCP Vegas or Netflix's
gradient limiter do: ``base`` is the fastest recent handshake (what one costs without
queueing), ``recent`` a moving average. While ``recent`` stays within ``TOLERANCE`` of
``base``, handshakes are not queueing and the limit grows by about its square root; when
they queue, the limit shrinks in proportion. A handshake that has taken far longer than
the others (a host that accepted the connection but does not answer) is waiting, not
working: after ``STALE_FACTOR`` times the recent duration it stops counting against the
limit, so a few such hosts cannot hold up the rest until their connect timeout.
"""
from __future__ import annotations

import itertools
import math
import threading
import time
from typing import Callable, Dict, Optional

#: Queueing tolerated before the limit shrinks: handshakes may take this many times the
#: fastest one. Lower keeps the client cheaper, higher keeps more in flight.
TOLERANCE = 1.5
#: Limits for one worker. LOW keeps enough in flight to keep a server's cores busy.
LOW = 4
INITIAL = 8
#: Weight of the newest handshake in the moving average, and of the newest limit.
RECENT_WEIGHT = 0.2
LIMIT_WEIGHT = 0.1
#: The fastest handshake is forgotten slowly (per handshake), so that one lucky early
#: measurement cannot hold the limit down for the whole run.
BASE_DRIFT = 0.001
#: A handshake older than STALE_FACTOR x the recent duration (and STALE_MIN seconds) no
#: longer holds a slot.
STALE_FACTOR = 4.0
STALE_MIN = 1.0


class HandshakeLimiter:
    """A counting semaphore whose size adapts to how long handshakes take."""

    def __init__(self, high: int, initial: int = INITIAL, low: int = LOW,
                 clock: Callable[[], float] = time.monotonic):
        self.high = max(1, high)
        self.low = min(low, self.high)
        self.limit = float(min(max(initial, self.low), self.high))
        self.base: Optional[float] = None
        self.recent: Optional[float] = None
        self._clock = clock
        self._cond = threading.Condition()
        self._started: Dict[int, float] = {}  # slot token -> when its handshake began
        self._tokens = itertools.count()

    @property
    def size(self) -> int:
        """Handshakes allowed at once right now."""
        return max(1, int(self.limit))

    def stale_after(self) -> float:
        """Seconds after which a handshake stops holding its slot."""
        typical = self.recent if self.recent is not None else 0.0
        return max(STALE_MIN, STALE_FACTOR * typical)

    def busy(self) -> int:
        """Handshakes holding a slot: begun, not ended, not yet stale."""
        horizon = self._clock() - self.stale_after()
        return sum(1 for t in self._started.values() if t > horizon)

    def acquire(self, timeout: float) -> Optional[int]:
        """Wait up to ``timeout`` for a slot: a token for :meth:`release`, or None."""
        with self._cond:
            if self.busy() >= self.size:
                self._cond.wait_for(lambda: self.busy() < self.size, timeout)
                if self.busy() >= self.size:
                    return None
            token = next(self._tokens)
            self._started[token] = self._clock()
            return token

    def release(self, token: int, ok: bool) -> None:
        """Give a slot back; ``ok``: the handshake completed, so its duration counts (a host
        that refused or failed says nothing about load)."""
        with self._cond:
            started = self._started.pop(token)
            if ok:
                self._learn(self._clock() - started)
            self._cond.notify(max(1, self.size - self.busy()))

    def _learn(self, took: float) -> None:
        took = max(took, 1e-6)
        if self.base is None or took < self.base:
            self.base = took
        else:
            self.base += (took - self.base) * BASE_DRIFT
        self.recent = took if self.recent is None else self.recent + (took - self.recent) * RECENT_WEIGHT
        gradient = max(0.5, min(1.0, TOLERANCE * self.base / self.recent))
        target = self.limit * gradient + math.sqrt(self.limit)
        limit = self.limit + (target - self.limit) * LIMIT_WEIGHT
        self.limit = min(float(self.high), max(float(self.low), limit))
