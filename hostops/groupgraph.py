"""The group graph's two walks, iterative so that any depth is fine (no RecursionError).

Owns: finding a cycle of children and every group's depth below the groups without parents.
Must not import anything of hostops: it works on plain name -> children mappings.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence


def find_cycle(children: Mapping[str, Sequence[str]]) -> Optional[List[str]]:
    """A path ``a -> b -> ... -> a`` through children if there is one (iterative DFS)."""
    state: Dict[str, int] = {}  # 1 on the current path, 2 done
    for start in children:
        if start in state:
            continue
        path = [start]
        state[start] = 1
        iters = [iter(children[start])]
        while iters:
            child = next(iters[-1], None)
            if child is None:
                state[path.pop()] = 2
                iters.pop()
            elif state.get(child) == 1:
                return path[path.index(child):] + [child]
            elif child not in state:
                state[child] = 1
                path.append(child)
                iters.append(iter(children[child]))
    return None


def depths(children: Mapping[str, Sequence[str]], parents: Mapping[str, int]) -> Dict[str, int]:
    """Every group's longest distance from a group without parents (``all``), in one pass in
    topological order; groups on a cycle are left out. ``parents``: how many each group has."""
    waiting = dict(parents)
    found = {name: 0 for name, n in waiting.items() if n == 0}
    ready = list(found)
    while ready:
        name = ready.pop()
        for child in children[name]:
            found[child] = max(found.get(child, 0), found[name] + 1)
            waiting[child] -= 1
            if waiting[child] == 0:
                ready.append(child)
    return found
