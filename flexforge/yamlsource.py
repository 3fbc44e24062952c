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

from flexforge.errors import has_control

try:  # the C loader is several times faster on big manifests
    from yaml import CSafeLoader as _CLoader
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    from yaml import SafeLoader as _CLoader  # type: ignore[assignment]

# Generous for any hand-written manifest, small enough to refuse alias bombs at once; a large
# file may hold one value for every NODE_BYTES of its text (100,000 assets are ~700,000 values in
# 13 MB), a bomb is many values out of few bytes.
MAX_NODES = 200_000
NODE_BYTES = 8
MAX_DEPTH = 64
MAX_BYTES = 16 * 1024 * 1024

Path_ = tuple[str | int, ...]
_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_MERGE = "tag:yaml.org,2002:merge"
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
    # The composed nodes: where a value or key stands is read from their marks only when a
    # message or an asset's line asks (most paths of a valid manifest are never asked about).
    root: yaml.Node | None = None
    problems: list[YamlProblem] = field(default_factory=list)
    # Paths that stand for others (a matrix cell for its template, a candidate for its asset):
    # new prefix -> the prefix it was made from, so that errors point where it was written.
    moved: dict[Path_, Path_] = field(default_factory=dict)
    _children: dict[int, dict[str, tuple[yaml.Node, yaml.Node]]] = field(default_factory=dict)

    def where(self, path: Path_) -> tuple[int, int]:
        """The position of `path`, or of its nearest ancestor that has one."""
        return _position(self._walk(path)[1])

    def key_where(self, path: Path_) -> tuple[int, int]:
        """The position of the key naming `path` (better than its value for 'unknown key')."""
        key, node, found = self._walk(path)
        return _position(key if found and key is not None else node)

    def place(self, new: Path_, like: Path_) -> None:
        """Say that `new` (and all under it) was written at `like`."""
        self.moved[new] = like

    def _walk(self, path: Path_) -> tuple[yaml.Node | None, yaml.Node | None, bool]:
        """(the key naming the deepest node found along `path`, that node, whether it is the
        whole path's)."""
        path = self._unmoved(path)
        node, key = self.root, None
        for part in path:
            child = self._child(node, part)
            if child is None:
                return key, node, False
            key, node = child
        return key, node, True

    def _unmoved(self, path: Path_) -> Path_:
        for _ in range(8):  # a candidate of a matrix cell is moved twice; never a loop
            like = self.moved.get(path[:2])
            if like is None:
                break
            path = (*like, *path[2:])
        return path

    def _child(self, node: yaml.Node | None, part: str | int) -> tuple[yaml.Node | None, yaml.Node] | None:
        if isinstance(node, yaml.SequenceNode):
            ok = isinstance(part, int) and not isinstance(part, bool) and 0 <= part < len(node.value)
            return (None, node.value[part]) if ok else None
        if not isinstance(node, yaml.MappingNode) or not isinstance(part, str):
            return None
        return self.children(node).get(part)

    def children(self, node: yaml.MappingNode) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """A mapping's (key, value) nodes by the name _Builder gives the key, the first of equal
        ones; made once per mapping (a thousand duplicates ask a thousand times)."""
        children = self._children.get(id(node))
        if children is None:
            children = self._children[id(node)] = _named_children(node)
        return children


def _named_children(node: yaml.MappingNode) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    named: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    constructor = yaml.constructor.SafeConstructor()
    for key, value in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == _MERGE:
            continue
        try:
            name = key.value if key.tag == _STR else constructor.construct_object(key)
        except (ValueError, yaml.YAMLError, *_UNMADE):
            continue
        if isinstance(name, str | int | float | bool):
            named.setdefault(str(name), (key, value))
    return named


def _position(node: yaml.Node | None) -> tuple[int, int]:
    if node is None:
        return (1, 1)
    return (node.start_mark.line + 1, node.start_mark.column + 1)


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
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path, depth)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i), depth + 1) for i, item in enumerate(node.value)]
        self._spend(len(node.value))
        return self._scalar(node, path)

    def _scalar(self, node: yaml.Node, path: Path_) -> Any:
        """A scalar, refusing numbers no JSON (the lock, the content key, the API) can carry:
        .nan, .inf, 1.0e400, and integers longer than Python converts (4300 digits)."""
        tag, text = node.tag, node.value
        if tag == _STR:
            return text  # what SafeConstructor makes of a string, without its bookkeeping
        if tag == _INT and text.isascii() and text.isdigit() and len(text) < 19 and text[:1] != "0":
            return int(text)  # a plain decimal (seeds, sizes): what SafeConstructor makes of it
        value = self._construct(node, path)
        if value is _UNBUILT:
            return None
        if isinstance(value, float) and not math.isfinite(value):
            shown = str(text)[:40]
            self._problem(node, path, f"{shown} is not a finite number; write a number, or quote it as text")
            return None
        return value

    def _spend(self, chars: int) -> None:
        self.text_left -= chars
        if self.text_left < 0:
            raise _TooBig("aliases repeat text to many times the file's size (an alias bomb?)")

    def _mapping(self, node: yaml.MappingNode, path: Path_, depth: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                self._problem(key_node, path, "merge keys (<<) are not supported; repeat the values")
                continue
            if isinstance(key_node, yaml.ScalarNode):
                self.text_left -= len(key_node.value)
                if self.text_left < 0:  # keys are quoted in messages: spent before any is made
                    self._spend(0)
                key = key_node.value if key_node.tag == _STR else self._construct(key_node, path)
                if key is _UNBUILT:
                    continue
            else:
                key = None
            if not isinstance(key, str | int | float | bool) or key is None:
                self._problem(key_node, path, "a mapping key must be a plain string")
                continue
            name = str(key)
            if has_control(name):
                # Every key is a name (an asset id, a var, a field): a line break in one passed
                # the `$` of patterns checked with Python's re, and made an output file name.
                # Not quoted back: the message would carry it into logs and CI annotations.
                self._problem(
                    key_node, path, "a key holds a line break or control character; write it on one line"
                )
                continue
            if name in result:
                self._duplicate(name, node, key_node, path)
                continue
            if value_node.__class__ is not _SCALAR or value_node.tag != _STR or depth >= MAX_DEPTH:
                result[name] = self.build(value_node, (*path, name), depth + 1)
                continue
            # build() for a plain string, inline: most values of a big manifest are one.
            self.nodes += 1
            if self.nodes > self.max_nodes:
                raise _TooBig(f"more than {self.max_nodes} values (an alias bomb?); split the manifest")
            self.text_left -= len(value_node.value)
            result[name] = value_node.value
        self._spend(0)  # what the keys and strings above spent: no value is used before this
        return result

    def _duplicate(self, name: str, node: yaml.MappingNode, key_node: yaml.Node, path: Path_) -> None:
        first = self.doc.children(node)[name][0]
        shown = name if len(name) <= 60 else name[:57] + "..."
        line = first.start_mark.line + 1
        self._problem(key_node, (*path, name), f"duplicate key {shown!r} (first defined on line {line})")

    def _construct(self, node: yaml.Node, path: Path_) -> Any:
        """What SafeConstructor makes of a scalar (a value or a key), or _UNBUILT after saying
        why it cannot: an int longer than Python converts, a tagged scalar its tag cannot make."""
        try:
            return self.scalars.construct_object(node)
        except ValueError:
            self._problem(node, path, "a number too long to use; write a smaller one")
        except _UNMADE:
            tag = str(node.tag).replace("tag:yaml.org,2002:", "!!")
            shown = str(node.value)[:40]
            self._problem(node, path, f"{shown!r} is not a valid {tag}; remove the tag or quote the text")
        return _UNBUILT

    def _problem(self, node: yaml.Node, path: Path_, message: str) -> None:
        mark = node.start_mark
        self.doc.problems.append(YamlProblem(mark.line + 1, mark.column + 1, path, message))


# What PyYAML's constructors raise for a tagged scalar they cannot make (`!!bool maybe`,
# `!!timestamp soon`, an empty `!!int`) besides ValueError.
_UNMADE = (KeyError, IndexError, AttributeError, TypeError)
_UNBUILT = object()  # _Builder._construct's "said why not"

_TAGS: dict[str, str] = {}  # plain scalar -> its implicit tag (a function of its text alone)
_TAGS_LIMIT = 4096


class _Loader(_CLoader):
    """The loader with each plain scalar's tag looked up once: a big manifest says `seed:`,
    `prompt:` and `references:` a thousand times, and the resolver tries a list of regexes on
    each (a tenth of composing it)."""

    def resolve(self, kind: type[yaml.Node], value: str, implicit: tuple[bool, bool]) -> str:
        if kind is not _SCALAR or not implicit[0] or len(value) > 64:
            return str(super().resolve(kind, value, implicit))  # type: ignore[no-untyped-call]
        tag = _TAGS.get(value)
        if tag is None:
            tag = str(super().resolve(kind, value, implicit))  # type: ignore[no-untyped-call]
            if len(_TAGS) < _TAGS_LIMIT:
                _TAGS[value] = tag
        return tag


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
        doc.root = node
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
