"""Hostile local users on a target, for the hardening tests.

The lab sshd runs on this machine, so the "remote" file system is the local one: an
attacker is a thread of the test process acting on the destination directory the way
another user of the host who can write that directory would.
"""
from __future__ import annotations

import os
import re
import threading
import time
from typing import List, Optional

TEMP = re.compile(r"\..+\.hostops-[0-9A-Za-z]{8}")


def swap_for_link(path: str, victim_file: str, victim_dir: Optional[str] = None) -> bool:
    """Replace the name ``path`` by a symbolic link: a file atomically by rename(2) of a link
    over it, a directory by moving it aside (``NAME.stolen``) and linking the name. True when done."""
    link = f"{path}.link-{os.getpid()}-{threading.get_ident()}"
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            os.rename(path, path + ".stolen")
            os.symlink(victim_dir or os.path.dirname(victim_file), path)
        elif os.path.isfile(path) and not os.path.islink(path):
            os.symlink(victim_file, link)
            os.rename(link, path)
        else:
            return False
        return True
    except OSError:
        try:
            os.unlink(link)
        except OSError:
            pass
        return False


class TempSwapper:
    """Polls ``directory`` and swaps every hostops temporary name that appears (a file or a
    directory) for a link to ``victim_file`` / ``victim_dir``, as fast as it can.

    Bounded: it stops after ``max_polls`` listings or ``stop()``, whichever comes first.
    ``swaps`` lists the names it swapped.
    """

    def __init__(self, directory: str, victim_file: str, victim_dir: Optional[str] = None,
                 max_polls: int = 200000):
        self.directory = directory
        self.victim_file = victim_file
        self.victim_dir = victim_dir
        self.max_polls = max_polls
        self.swaps: List[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="temp-swapper", daemon=True)

    def _run(self) -> None:
        for _ in range(self.max_polls):
            if self._stop.is_set():
                return
            try:
                names = os.listdir(self.directory)
            except OSError:
                names = []
            for name in names:
                if TEMP.fullmatch(name) and name not in self.swaps:
                    if swap_for_link(os.path.join(self.directory, name), self.victim_file, self.victim_dir):
                        self.swaps.append(name)
            time.sleep(0.0005)

    def __enter__(self) -> "TempSwapper":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def __exit__(self, *exc) -> None:
        self.stop()
