"""Messages from the pool to its caller: frozen dataclasses instead of positional tuples.

Minimal version (the "wire" helper owns this module and replaces it at merge).
Must not import: anything of hostops beyond type names.
"""
from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Started:
    job: Any


@dataclasses.dataclass(frozen=True)
class Output:
    job: Any
    stream: str
    data: bytes


@dataclasses.dataclass(frozen=True)
class Done:
    job: Any
    result: Any
    by_parent: bool = False
