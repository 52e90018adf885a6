"""The adaptive handshake limit (hostops.limiter), driven by a fake clock."""
from __future__ import annotations

import threading

import pytest

from hostops import limiter
from hostops.limiter import HandshakeLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def handshakes(lim: HandshakeLimiter, clock: Clock, count: int, took: float) -> None:
    """``count`` handshakes one after another, each taking ``took`` seconds."""
    for _ in range(count):
        token = lim.acquire(0)
        assert token is not None
        clock.now += took
        lim.release(token, ok=True)


def test_starts_at_initial_and_stays_within_bounds():
    clock = Clock()
    lim = HandshakeLimiter(high=100, initial=8, low=4, clock=clock)
    assert lim.size == 8
    handshakes(lim, clock, 2000, 0.05)  # never queueing: grows, but not past high
    assert lim.size == 100
    lim2 = HandshakeLimiter(high=3, initial=8, low=4, clock=clock)
    assert lim2.size == 3 and lim2.low == 3


def test_grows_while_durations_stay_flat():
    """Handshakes that wait on the network (same duration however many run) raise the limit."""
    clock = Clock()
    lim = HandshakeLimiter(high=256, initial=8, clock=clock)
    handshakes(lim, clock, 200, 0.3)
    assert lim.size > 40


def test_shrinks_when_durations_grow():
    """Handshakes that queue for CPU (each slower than the fastest by far) lower the limit."""
    clock = Clock()
    lim = HandshakeLimiter(high=256, initial=8, clock=clock)
    handshakes(lim, clock, 200, 0.05)
    grown = lim.size
    handshakes(lim, clock, 200, 0.5)  # ten times slower than the fastest: queueing
    assert lim.size < grown / 4


def test_failures_do_not_teach_anything():
    clock = Clock()
    lim = HandshakeLimiter(high=256, initial=8, clock=clock)
    for _ in range(50):
        token = lim.acquire(0)
        clock.now += 10.0
        lim.release(token, ok=False)
    assert lim.size == 8 and lim.base is None and lim.recent is None


def test_full_limiter_refuses_then_admits_after_release():
    clock = Clock()
    lim = HandshakeLimiter(high=10, initial=2, low=2, clock=clock)
    a, b = lim.acquire(0), lim.acquire(0)
    assert a is not None and b is not None
    assert lim.acquire(0) is None
    lim.release(a, ok=False)
    assert lim.acquire(0) is not None


def test_stale_handshakes_stop_holding_slots():
    """Hosts that accepted the connection but never answer wait out their connect timeout
    without keeping every other host waiting."""
    clock = Clock()
    lim = HandshakeLimiter(high=10, initial=2, low=2, clock=clock)
    stuck = [lim.acquire(0), lim.acquire(0)]
    assert lim.acquire(0) is None
    clock.now += limiter.STALE_MIN + 0.01
    fresh = lim.acquire(0)
    assert fresh is not None
    assert lim.busy() == 1
    for token in stuck + [fresh]:
        lim.release(token, ok=False)
    assert lim.busy() == 0


def test_waiter_wakes_on_release():
    lim = HandshakeLimiter(high=1, initial=1, low=1)
    first = lim.acquire(0)
    got = []
    waiter = threading.Thread(target=lambda: got.append(lim.acquire(5.0)))
    waiter.start()
    lim.release(first, ok=True)
    waiter.join(5.0)
    assert not waiter.is_alive() and got and got[0] is not None


@pytest.mark.parametrize("took", [0.001, 0.02, 0.3, 2.0])
def test_steady_state_is_bounded_for_any_duration(took):
    clock = Clock()
    lim = HandshakeLimiter(high=256, clock=clock)
    handshakes(lim, clock, 1000, took)
    assert limiter.LOW <= lim.size <= 256
