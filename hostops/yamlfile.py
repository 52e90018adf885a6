"""YAML that remembers where things are: every mapping records its keys' line numbers,
so inventories and runbooks can say ``file:line: what is wrong``."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import yaml

#: The most values (scalars, lists and mappings) one document may hold once every alias is
#: counted where it is used. PyYAML shares an aliased value instead of copying it, but whatever
#: walks the result (``inventory --json``, templating, merging variables) sees every use, so a
#: "billion laughs" bomb of nested aliases (a few hundred bytes, 10**9 values) must be refused
#: before anything walks it. A million is far above a 100,000-host inventory with its variables.
MAX_NODES = 1_000_000

#: The deepest nesting of lists and mappings accepted (aliases counted where used). Deeper
#: documents are refused with a line rather than exhausting Python's recursion limit in the
#: loader or in whatever walks the values later; real inventories and runbooks nest about ten.
MAX_DEPTH = 100


class YamlProblem(ValueError):
    """Syntax or structure the loader cannot accept; ``line`` is 1-based where known."""

    def __init__(self, message: str, line: Optional[int] = None):
        super().__init__(message, line)
        self.message = message
        self.line = line


class LineMap(dict):
    """A YAML mapping that remembers its own line and the line of each key (1-based)."""

    line: int = 0
    key_lines: Dict[Any, int]

    def line_of(self, key: Any, default: Optional[int] = None) -> Optional[int]:
        return self.key_lines.get(key, default if default is not None else self.line)


#: libyaml's parser when PyYAML was built with it: about ten times faster than the pure-Python
#: one (a 2,000-host inventory is otherwise a second of CPU); same nodes, same line marks.
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class LineLoader(_SafeLoader):  # type: ignore[misc,valid-type]
    def construct_mapping(self, node, deep=False):  # type: ignore[override]  # noqa: ARG002  (PyYAML's signature)
        self.flatten_mapping(node)
        result = LineMap()
        result.line = node.start_mark.line + 1
        result.key_lines = {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                raise YamlProblem("a mapping key must be a plain name, not a list or mapping",
                                  key_node.start_mark.line + 1) from None
            result[key] = self.construct_object(value_node, deep=True)
            result.key_lines[key] = key_node.start_mark.line + 1
        return result


LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, LineLoader.construct_mapping)


def _children(node: yaml.Node) -> List[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def check_size(root: yaml.Node, max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH) -> int:
    """The number of values ``root`` holds with every alias expanded where it is used; raise
    YamlProblem (with a line) past ``max_nodes`` or ``max_depth``, or on an alias inside itself.

    An alias is the very node its anchor composed, so sizes memoized by node identity make this
    linear in the document's text whatever the aliases multiply to, and nothing is built. The
    walk is iterative: a deep document cannot exhaust the recursion limit here.
    """
    sizes: Dict[int, Tuple[int, int]] = {}  # id(node) -> (values, nesting depth)
    open_nodes = set()  # the nodes on the current path: meeting one again is a cycle
    stack: List[Tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            open_nodes.discard(key)
            kids = [sizes[id(c)] for c in _children(node)]
            size = 1 + sum(k[0] for k in kids)
            depth = 1 + max((k[1] for k in kids), default=0)
            line = node.start_mark.line + 1
            if size > max_nodes:
                raise YamlProblem(f"this value expands to more than {max_nodes} values once its aliases are "
                                  f"counted (an alias bomb?); the limit is {max_nodes}", line)
            sizes[key] = (size, depth)
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            raise YamlProblem("a YAML alias refers to a value that contains it (a value cannot contain "
                              "itself)", node.start_mark.line + 1)
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in sizes)
    if sizes[id(root)][1] > max_depth:
        node = root  # report where the deepest path crosses the limit, counting from the top
        for _ in range(max_depth):
            node = max(_children(node), key=lambda c: sizes[id(c)][1])
        raise YamlProblem(f"lists and mappings nest more than {max_depth} levels deep here (the limit)",
                          node.start_mark.line + 1)
    return sizes[id(root)][0]


def _load_checked(text: str) -> Any:
    """``yaml.load`` in two halves: compose the node graph, check its expanded size, construct."""
    loader = LineLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        check_size(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def load(text: str) -> Any:
    """Parse YAML with line-remembering mappings; YamlProblem (with the line) on any error,
    including a document whose aliases expand past MAX_NODES or nest past MAX_DEPTH."""
    try:
        return _load_checked(text)
    except YamlProblem:
        raise
    except RecursionError:
        raise YamlProblem("YAML nested too deeply") from None
    except ValueError as exc:  # e.g. an integer longer than Python converts
        raise YamlProblem(f"YAML value cannot be read: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        context, cmark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and cmark is not None and mark is not None and cmark.line != mark.line:
            # e.g. an unclosed quote: the problem shows at the end, the cause where it started
            problem += f" ({context} that starts on line {cmark.line + 1})"
        raise YamlProblem(f"YAML syntax error: {problem}", mark.line + 1 if mark else None) from None


def start_line(text: str) -> int:
    """The line where the document's top-level value starts."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, RecursionError, ValueError):
        return 1
    return node.start_mark.line + 1 if node is not None else 1


def type_name(value: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number", bool: "true/false"}.get(
        type(value), "nothing" if value is None else type(value).__name__)
