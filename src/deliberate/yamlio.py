"""Safe YAML loading that keeps where every value came from.

PyYAML's composed nodes carry start marks; we walk them ourselves (instead of ``yaml.safe_load``)
to keep a map from a value's path to its line and column, to refuse duplicate keys, and to
refuse tags that would construct Python objects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import InputError, Problem

MAX_FILE_BYTES = 4 * 1024 * 1024
#: Values a document may hold once its aliases are expanded. YAML aliases reuse a node, so a
#: few lines ("billion laughs") can stand for billions of values; we count before we build.
MAX_NODES = 200_000
#: Nesting of mappings and lists; flows nest a handful of levels deep.
MAX_DEPTH = 64
Marks = dict[tuple[Any, ...], tuple[int, int]]

_SAFE_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:map",
    "tag:yaml.org,2002:seq",
}


class YamlProblem(InputError):
    """A file that is not the YAML we accept; carries the problem with its location."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        super().__init__(problem.message, where=problem.location(), hint=problem.hint)


def _mib(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MiB" if n >= 1024 * 1024 else f"{n} bytes"


def read_text(path: Path) -> str:
    """Read a user file as UTF-8 text, with one clean error for each way that can fail."""
    name = str(path)
    if not path.exists():
        raise YamlProblem(Problem(name, None, None, "no such file", "check the path"))
    if path.is_dir():
        raise YamlProblem(Problem(name, None, None, "is a directory, not a file", "pass a .yaml file"))
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise YamlProblem(
            Problem(name, None, None, f"file is too large ({_mib(size)}, limit {_mib(MAX_FILE_BYTES)})",
                    "flows and registries are a few kilobytes; split the file or check its content")
        )
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise YamlProblem(
            Problem(name, line, None, f"not valid UTF-8 (byte 0x{raw[exc.start]:02x})",
                    "save the file as UTF-8")
        ) from None


# libyaml's parser when PyYAML has it (about 10x faster); its nodes carry the same marks
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _compose(text: str) -> Any:
    try:
        return yaml.compose(text, Loader=_LOADER)
    except yaml.YAMLError:
        if _LOADER is yaml.SafeLoader:
            raise
        # Bad YAML: the pure-Python parser says what is wrong in more words ("found character
        # '\t' ..."), which the hints build on. Errors are rare; parsing twice costs nothing.
        return yaml.compose(text, Loader=yaml.SafeLoader)


def load_yaml_text(text: str, name: str) -> tuple[Any, Marks]:
    """Parse YAML text into plain data and a map of path -> (line, column), 1-based."""
    try:
        node = _compose(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (None, None)
        msg = exc.problem or str(exc)
        hint = None
        if "\t" in msg or "'\\t'" in msg:
            hint = "YAML indentation must use spaces, not tabs"
        raise YamlProblem(Problem(name, line, col, f"invalid YAML: {msg}", hint)) from None
    except yaml.YAMLError as exc:
        raise YamlProblem(Problem(name, None, None, f"invalid YAML: {exc}")) from None
    marks: Marks = {}
    if node is None:
        return None, marks
    _check_size(node, name)
    return _build(node, (), marks, name, yaml.SafeLoader("")), marks


def _check_size(root: yaml.Node, name: str) -> None:
    """Refuse a document whose aliases expand past :data:`MAX_NODES` values, or that nests past
    :data:`MAX_DEPTH`, before building anything. Each distinct node is sized once (aliases share
    nodes), so a bomb costs as much to measure as it takes to write."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node, depth: int) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        if depth > MAX_DEPTH:
            raise YamlProblem(Problem(name, node.start_mark.line + 1, node.start_mark.column + 1,
                                      f"nested more than {MAX_DEPTH} levels deep",
                                      "flows and registries nest a few levels; flatten the file"))
        total = 1
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                total += size(k, depth + 1) + size(v, depth + 1)
        elif isinstance(node, yaml.SequenceNode):
            for v in node.value:
                total += size(v, depth + 1)
        if total > MAX_NODES:
            raise YamlProblem(Problem(name, node.start_mark.line + 1, node.start_mark.column + 1,
                                      f"expands to more than {MAX_NODES:,} values (YAML aliases "
                                      "repeat what they point at)",
                                      "use each anchor (&name) a few times at most"))
        sizes[id(node)] = total
        return total

    size(root, 0)


def load_yaml_file(path: Path) -> tuple[Any, Marks]:
    """Read and parse a YAML file (see :func:`load_yaml_text`)."""
    return load_yaml_text(read_text(path), str(path))


def locate(marks: Marks, loc: tuple[Any, ...]) -> tuple[int | None, int | None]:
    """The line and column of the deepest known prefix of ``loc``."""
    loc = tuple(loc)
    while loc:
        if loc in marks:
            return marks[loc]
        loc = loc[:-1]
    return marks.get((), (None, None))


def _build(node: yaml.Node, path: tuple[Any, ...], marks: Marks, name: str, constructor: Any) -> Any:
    if isinstance(node, yaml.ScalarNode) and node.style in ("|", ">"):
        # a block scalar's text starts on the line after its indicator: positions inside the text
        # (a template's error line) count from there
        marks[path] = (node.start_mark.line + 2, 1)
    else:
        marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if node.tag not in _SAFE_TAGS:
        raise YamlProblem(
            Problem(name, node.start_mark.line + 1, node.start_mark.column + 1,
                    f"YAML tag {node.tag!r} is not allowed", "flows hold plain data only")
        )
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise YamlProblem(Problem(name, key_node.start_mark.line + 1,
                                          key_node.start_mark.column + 1, "YAML merge keys (<<) are not supported"))
            key = _build(key_node, path + ("<key>",), marks, name, constructor)
            if isinstance(key, (list, dict)):
                raise YamlProblem(Problem(name, key_node.start_mark.line + 1,
                                          key_node.start_mark.column + 1, "a mapping key must be a plain value"))
            if key in out:
                raise YamlProblem(
                    Problem(name, key_node.start_mark.line + 1, key_node.start_mark.column + 1,
                            f"duplicate key {key!r}", "each key may appear once")
                )
            out[key] = _build(value_node, path + (key,), marks, name, constructor)
        marks.pop(path + ("<key>",), None)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(v, path + (i,), marks, name, constructor) for i, v in enumerate(node.value)]
    try:
        return constructor.construct_scalar(node) if node.tag == "tag:yaml.org,2002:str" \
            else constructor.construct_object(node, deep=True)
    except yaml.YAMLError as exc:
        raise YamlProblem(Problem(name, node.start_mark.line + 1, node.start_mark.column + 1,
                                  f"invalid value: {exc}")) from None
