"""How many hosts can be in flight: the open-file limit, and processes x threads for -f.

Owns: raising RLIMIT_NOFILE, lowering -f when the limit cannot hold it, and the
(processes, threads) plan of a run. Must not import the pool, the worker or paramiko:
the parent asks before any worker exists.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, Optional, Tuple

from hostops.settings import Options

FDS_PER_HOST = 6
FDS_PER_WORKER = 64


def raise_fd_limit() -> int:
    """Raise the soft open-file limit as far as the hard limit allows; return the soft limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft == resource.RLIM_INFINITY:
        return hard
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def fit_forks(options: Options, hosts: int, warn: Callable[[str], None]) -> Options:
    """Lower -f when the open-file limit cannot hold that many hosts in flight (rather than
    failing hosts with EMFILE), and say so."""
    limit = raise_fd_limit()
    processes, _threads = plan(options.forks, options.processes, hosts)
    per_worker = (limit - FDS_PER_WORKER) // FDS_PER_HOST
    parent_room = (limit - 32) // 8  # the parent holds a few descriptors per worker, not per host
    most = max(1, min(per_worker * processes, parent_room * FDS_PER_HOST))
    wanted = min(options.forks, hosts)
    if wanted <= most:
        return options
    warn(f"lowering -f from {options.forks} to {most}: the open-file limit is {limit} "
         f"(raise it with 'ulimit -n' to run more hosts at once)")
    return dataclasses.replace(options, forks=most)


def plan(forks: int, processes: Optional[int], hosts: int) -> Tuple[int, int]:
    """(processes, threads per process) a run will use."""
    import math

    f = max(1, min(forks, hosts))
    p = max(1, min(processes or os.cpu_count() or 1, f))
    return p, math.ceil(f / p)
