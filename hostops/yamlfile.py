"""YAML that remembers where things are: every mapping records its keys' line numbers,
so inventories and runbooks can say ``file:line: what is wrong``."""
from __future__ import annotations

from typing import Any, Dict, Optional

import yaml


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
    def construct_mapping(self, node, deep=False):  # type: ignore[override]
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


def load(text: str) -> Any:
    """Parse YAML with line-remembering mappings; YamlProblem (with the line) on any error."""
    try:
        return yaml.load(text, Loader=LineLoader)  # noqa: S506 - a SafeLoader subclass
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
