"""The package's shape (issue 12): no import cycle, small modules, long functions explained.

These read the source with ``ast``; they guard the layout the README's "How it works" and
hostops/README.md describe, so a change that breaks it is seen in the test run.
"""
from __future__ import annotations

import ast
import os
from typing import Dict, List, Set

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "hostops")
MAX_MODULE_LINES = 520      # "no module over ~500 lines"
MAX_FUNCTION_LINES = 60     # longer ones say why they are one piece


def _modules() -> Dict[str, str]:
    found = {}
    for base, _dirs, files in os.walk(ROOT):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(base, name)
                rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
                found[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = path
    return found


def _imports(path: str, package: str, known: Set[str]) -> Set[str]:
    """hostops modules imported by ``path``, at any depth (function-level imports count:
    they still make a cycle of responsibilities), except under ``if TYPE_CHECKING``."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    skip: Set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
            skip.update(id(n) for child in node.body for n in ast.walk(child))
    out: Set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        names: List[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            mod = node.module if not node.level else ".".join(package.split(".")[:-node.level + 1 or None] +
                                                              [node.module])
            names = [mod] + [f"{mod}.{a.name}" for a in node.names]
        for name in names:
            if name in known:
                out.add(name)
    return out


def test_no_import_cycle_in_the_package():
    modules = _modules()
    graph = {m: _imports(p, m, set(modules)) - {m} for m, p in modules.items()}
    graph = {m: {d for d in deps if d != "hostops"} for m, deps in graph.items()}  # lazy exports
    state: Dict[str, int] = {}
    cycles: List[List[str]] = []

    def visit(node: str, stack: List[str]) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_module_over_the_size_bound():
    big = {m: n for m, p in _modules().items() if (n := len(open(p, encoding="utf-8").read().splitlines()))
           > MAX_MODULE_LINES}
    assert not big, f"modules over {MAX_MODULE_LINES} lines: {big}"


def test_long_functions_say_why_they_are_one_piece():
    unexplained = []
    for module, path in _modules().items():
        lines = open(path, encoding="utf-8").read().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                text = "\n".join(lines[max(0, first - 4):node.end_lineno]).lower()  # a comment above counts
                if length > MAX_FUNCTION_LINES and "one piece" not in text:
                    unexplained.append(f"{module}.{node.name} ({length} lines)")
    assert not unexplained, f"functions over {MAX_FUNCTION_LINES} lines without a 'one piece' reason: {unexplained}"
