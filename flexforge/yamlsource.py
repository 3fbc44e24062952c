"""YAML text -> plain data, with the line and column of every value and strict duplicate keys.

PyYAML keeps the last of two equal keys and expands aliases without bound; a manifest reviewed
in pull requests needs both to be errors, and every error needs a line, so we compose nodes
ourselves instead of calling `yaml.safe_load`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

try:  # the C loader is several times faster on big manifests
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

# Generous for any hand-written manifest, small enough to refuse alias bombs at once; a large
# file may hold one value for every NODE_BYTES of its text (100,000 assets are ~700,000 values in
# 13 MB), a bomb is many values out of few bytes.
MAX_NODES = 200_000
NODE_BYTES = 8
MAX_DEPTH = 64
MAX_BYTES = 16 * 1024 * 1024

Path_ = tuple[str | int, ...]
_STR = "tag:yaml.org,2002:str"
_SCALAR = yaml.ScalarNode


@dataclass(slots=True)
class YamlProblem:
    line: int
    col: int
    path: Path_
    message: str


@dataclass(slots=True)
class YamlDocument:
    data: Any
    # Where each value (and each mapping key, under path + ("<key>",)) starts, 1-based.
    positions: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    problems: list[YamlProblem] = field(default_factory=list)

    def where(self, path: Path_) -> tuple[int, int]:
        """The position of `path`, or of its nearest ancestor that has one."""
        while path not in self.positions and path:
            path = path[:-1]
        return self.positions.get(path, (1, 1))

    def key_where(self, path: Path_) -> tuple[int, int]:
        """The position of the key naming `path` (better than its value for 'unknown key')."""
        return self.positions.get((*path, "<key>"), self.where(path))


class _Builder:
    def __init__(self, doc: YamlDocument, text_budget: int, max_nodes: int = MAX_NODES) -> None:
        self.doc = doc
        self.nodes = 0
        self.max_nodes = max_nodes
        self.text_left = text_budget  # aliases may repeat text, but not amplify it without bound
        self.scalars = yaml.constructor.SafeConstructor()

    def build(self, node: yaml.Node, path: Path_, depth: int) -> Any:
        self.nodes += 1
        if self.nodes > self.max_nodes:
            raise _TooBig(f"more than {self.max_nodes} values (an alias bomb?); split the manifest")
        if depth > MAX_DEPTH:
            raise _TooBig(f"nested deeper than {MAX_DEPTH} levels")
        mark = node.start_mark
        self.doc.positions.setdefault(path, (mark.line + 1, mark.column + 1))
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path, depth)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i), depth + 1) for i, item in enumerate(node.value)]
        self._spend(len(node.value))
        return self._scalar(node, path)

    def _scalar(self, node: yaml.Node, path: Path_) -> Any:
        """A scalar, refusing numbers no JSON (the lock, the content key, the API) can carry:
        .nan, .inf, 1.0e400, and integers longer than Python converts (4300 digits)."""
        if node.tag == _STR:
            return node.value  # what SafeConstructor makes of a string, without its bookkeeping
        try:
            value = self.scalars.construct_object(node)
        except ValueError:
            self._problem(node, path, "a number too long to use; write a smaller one")
            return None
        if isinstance(value, float) and not math.isfinite(value):
            shown = str(node.value)[:40]
            self._problem(node, path, f"{shown} is not a finite number; write a number, or quote it as text")
            return None
        return value

    def _spend(self, chars: int) -> None:
        self.text_left -= chars
        if self.text_left < 0:
            raise _TooBig("aliases repeat text to many times the file's size (an alias bomb?)")

    def _mapping(self, node: yaml.MappingNode, path: Path_, depth: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        seen: dict[str, int] = {}
        positions = self.doc.positions
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                self._problem(key_node, path, "merge keys (<<) are not supported; repeat the values")
                continue
            if isinstance(key_node, yaml.ScalarNode):
                self._spend(len(key_node.value))
                key = key_node.value if key_node.tag == _STR else self.scalars.construct_object(key_node)
            else:
                key = None
            if not isinstance(key, str | int | float | bool) or key is None:
                self._problem(key_node, path, "a mapping key must be a plain string")
                continue
            name = str(key)
            child = (*path, name)
            if name in seen:
                shown = name if len(name) <= 60 else name[:57] + "..."
                self._problem(
                    key_node, child, f"duplicate key {shown!r} (first defined on line {seen[name]})"
                )
                continue
            mark = key_node.start_mark
            seen[name] = mark.line + 1
            positions[(*child, "<key>")] = (mark.line + 1, mark.column + 1)
            if value_node.__class__ is not _SCALAR or value_node.tag != _STR or depth >= MAX_DEPTH:
                result[name] = self.build(value_node, child, depth + 1)
                continue
            # build() for a plain string, inline: most values of a big manifest are one.
            self.nodes += 1
            if self.nodes > self.max_nodes:
                raise _TooBig(f"more than {self.max_nodes} values (an alias bomb?); split the manifest")
            mark = value_node.start_mark
            positions.setdefault(child, (mark.line + 1, mark.column + 1))
            self._spend(len(value_node.value))
            result[name] = value_node.value
        return result

    def _problem(self, node: yaml.Node, path: Path_, message: str) -> None:
        mark = node.start_mark
        self.doc.problems.append(YamlProblem(mark.line + 1, mark.column + 1, path, message))


class _TooBig(Exception):
    pass


def parse_yaml(raw: bytes) -> YamlDocument:
    """Parse one YAML document. Problems are collected in `problems`, never raised."""
    doc = YamlDocument(data=None)
    if len(raw) > MAX_BYTES:
        doc.problems.append(YamlProblem(1, 1, (), f"larger than {MAX_BYTES // 2**20} MiB"))
        return doc
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # a UTF-8 BOM is harmless; editors on Windows add it
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        doc.problems.append(
            YamlProblem(line, 1, (), f"not UTF-8 (byte 0x{raw[exc.start]:02x}); save the file as UTF-8")
        )
        return doc
    if not text.strip():
        doc.problems.append(YamlProblem(1, 1, (), "the file is empty; run `flexforge init` for a starter"))
        return doc
    # libyaml composes recursively in C: thousands of nested levels crash the process, so text
    # that might nest deeply is composed by the pure-Python loader, whose recursion is bounded.
    loader = yaml.SafeLoader if _may_nest_deeply(text) else _Loader
    try:
        node = yaml.compose(text, Loader=loader)
    except RecursionError:
        doc.problems.append(YamlProblem(1, 1, (), f"nested deeper than {MAX_DEPTH} levels"))
        return doc
    except yaml.composer.ComposerError as exc:
        _yaml_problem(doc, exc, text)
        return doc
    except yaml.MarkedYAMLError as exc:
        _yaml_problem(doc, exc, text)
        return doc
    except yaml.YAMLError as exc:
        doc.problems.append(YamlProblem(1, 1, (), f"not valid YAML: {exc}"))
        return doc
    if node is None:
        doc.problems.append(YamlProblem(1, 1, (), "the file holds no YAML document"))
        return doc
    try:
        max_nodes = max(MAX_NODES, len(text) // NODE_BYTES)
        doc.data = _Builder(doc, 4 * len(text) + 65536, max_nodes).build(node, (), 0)
    except _TooBig as exc:
        doc.problems.append(YamlProblem(1, 1, (), str(exc)))
        doc.data = None
    except yaml.constructor.ConstructorError as exc:
        _yaml_problem(doc, exc, text)
        doc.data = None
    return doc


def _may_nest_deeply(text: str) -> bool:
    """A cheap over-estimate of nesting: open brackets so far (quotes ignored), plus each line's
    indentation and `- ` items. Passing it only means the slower, safe loader is used."""
    if _nesting_bound(text) <= MAX_DEPTH:
        return False  # the whole file's bound is low: no line can pass the limit
    depth = 0
    for line in text.splitlines():
        stripped = line.lstrip(" ")
        peak = depth
        if any(c in stripped for c in "[]{}"):
            for char in stripped:
                if char in "[{":
                    depth += 1
                    peak = max(peak, depth)
                elif char in "]}":
                    depth = max(0, depth - 1)
        if peak + stripped.count("- ") + (len(line) - len(stripped)) // 2 > MAX_DEPTH:
            return True
    return False


_INDENT = re.compile(r"^ *", re.M)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_AS_SQUARE = str.maketrans("{}", "[]")


def _nesting_bound(text: str) -> int:
    """At least what _may_nest_deeply's line-by-line count reaches on any line, in C-speed passes:
    the deepest bracket nesting (pairs peeled innermost first; unclosed ones all counted), every
    `- ` in the file, and the deepest indentation."""
    brackets = _NOT_BRACKET.sub("", text).translate(_AS_SQUARE)
    depth = 0
    while "[]" in brackets and depth <= MAX_DEPTH:
        brackets = brackets.replace("[]", "")
        depth += 1
    indent = max(map(len, _INDENT.findall(text)), default=0)
    return depth + brackets.count("[") + text.count("- ") + indent // 2


def _yaml_problem(doc: YamlDocument, exc: yaml.MarkedYAMLError, text: str) -> None:
    mark = exc.problem_mark or exc.context_mark
    line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    problem = exc.problem or "not valid YAML"
    lines = text.splitlines()
    if "\t" in problem or (0 < line <= len(lines) and "\t" in lines[line - 1][:col]):
        problem += " (YAML forbids tabs for indentation: use spaces)"
    doc.problems.append(YamlProblem(line, col, (), f"invalid YAML: {problem}"))
