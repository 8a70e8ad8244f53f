"""YAML loading that remembers where every key came from, so errors can name file, line and key path."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from orchestrator.errors import SpecError

KeyPath = tuple[str | int, ...]
MAX_SPEC_BYTES = 1_000_000  # a pipeline spec is a few KiB; anything this large is a mistake, not a spec
# A real spec nests about 6 levels and holds a few hundred values. PyYAML's composer and constructor recurse
# once per level (a RecursionError past ~300 nested `[`), and aliases share one node, so ten nested aliases of
# ten ("billion laughs", CVE-2003-1564 style) compose into a few dozen nodes but expand to 10**10 values for
# any code that walks the data (our key-line walk, pydantic). Both limits are checked on the parser's event
# stream and the shared node graph, before anything walks the expanded tree.
MAX_DEPTH = 64
MAX_VALUES = 100_000
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: fast


@dataclass(frozen=True)
class Located:
    """Parsed YAML data plus a map from key path to 1-based line number."""

    path: Path
    data: Any
    lines: dict[KeyPath, int] = field(default_factory=dict)
    # Key paths set by `--set` (orchestrator/overrides.py) -> the override's text: errors there name the override.
    origins: dict[KeyPath, str] = field(default_factory=dict)
    overrides: tuple[str, ...] = ()

    def line_of(self, loc: KeyPath) -> int:
        """Line of the deepest existing ancestor of loc (a missing key is reported at its parent)."""
        for cut in range(len(loc), -1, -1):
            if loc[:cut] in self.lines:
                return self.lines[loc[:cut]]
        return 1

    def where(self, loc: KeyPath) -> str:
        for cut in range(len(loc), 0, -1):
            if loc[:cut] in self.origins:
                return f"--set {self.origins[loc[:cut]]}: {format_loc(loc)}"
        return f"{self.path}:{self.line_of(loc)}: {format_loc(loc) or '(top level)'}"


def format_loc(loc: KeyPath) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def read_text(path: Path) -> str:
    """Read a spec file, refusing directories, huge files and binary content with a clear message."""
    if not path.exists():
        raise SpecError(f"{path}: no such file", "check the path; specs are YAML files")
    if path.is_dir():
        raise SpecError(f"{path}: is a directory, not a YAML file")
    size = path.stat().st_size
    if size > MAX_SPEC_BYTES:
        raise SpecError(f"{path}: {size} bytes is too large for a pipeline spec (limit {MAX_SPEC_BYTES})")
    raw = path.read_bytes()
    if b"\0" in raw:
        raise SpecError(f"{path}: looks binary (contains NUL bytes), not YAML")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not UTF-8 text (byte {exc.start})") from exc


def load(path: Path) -> Located:
    text = read_text(path)
    if not text.strip():
        raise SpecError(f"{path}:1: the file is empty", "a pipeline needs at least `name:` and `stages:`")
    try:
        _check_depth(path, text)
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            if node is not None:
                _check_expansion(path, node)
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise SpecError(f"{path}:{line}: YAML syntax error: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: YAML error: {exc}") from None
    lines: dict[KeyPath, int] = {}
    if node is not None:
        _walk(path, node, (), lines)
    return Located(path, data, lines)


def _check_depth(path: Path, text: str) -> None:
    """Refuse nesting deeper than MAX_DEPTH from the event stream (the parser itself does not recurse)."""
    depth = 0
    try:
        for event in yaml.parse(text, Loader=_Loader):
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    raise _too_deep(path, event.start_mark)
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    except yaml.MarkedYAMLError as exc:
        # libyaml (0.2.5+) stops at 1000 levels itself while looking ahead for simple keys in flow context.
        if "nesting depth" in str(exc.problem):
            raise _too_deep(path, exc.problem_mark) from None
        raise


def _too_deep(path: Path, mark: Any) -> SpecError:  # yaml.Mark, or libyaml's own Mark type
    line = mark.line + 1 if mark is not None else 1
    return SpecError(f"{path}:{line}: YAML nested more than {MAX_DEPTH} levels deep",
                     "a pipeline spec nests a few levels; flatten this value")


def _check_expansion(path: Path, root: yaml.Node) -> None:
    """Refuse a document whose aliases expand to more than MAX_VALUES values, naming where it explodes.
    Sizes are memoised per shared node, so the check costs the number of distinct nodes, not the expansion."""
    sizes: dict[int, int] = {}

    def children(node: yaml.Node) -> list[yaml.Node]:
        if isinstance(node, yaml.MappingNode):
            return [part for pair in node.value for part in pair]
        if isinstance(node, yaml.SequenceNode):
            return list(node.value)
        return []

    def size(node: yaml.Node) -> int:
        if id(node) not in sizes:
            sizes[id(node)] = 1 + sum(size(child) for child in children(node))  # depth is already bounded
        return sizes[id(node)]

    if size(root) <= MAX_VALUES:
        return
    node = root
    while True:  # descend to the innermost node that alone is too large: that is where the aliases multiply
        big = [child for child in children(node) if size(child) > MAX_VALUES]
        if not big:
            break
        node = big[0]
    raise SpecError(f"{path}:{node.start_mark.line + 1}: YAML aliases here expand to {size(root):,} values "
                    f"(limit {MAX_VALUES:,}): an alias bomb, not a pipeline spec",
                    "use each anchor for a small block (e.g. shared resources), not nested aliases of aliases")


def _walk(path: Path, node: yaml.Node, loc: KeyPath, lines: dict[KeyPath, int]) -> None:
    lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in seen:
                # PyYAML silently keeps the last duplicate; a silently dropped stage setting is worse than an error.
                raise SpecError(f"{path}:{key_node.start_mark.line + 1}: {format_loc(loc + (key,))}: duplicate key")
            seen.add(key)
            lines[loc + (key,)] = key_node.start_mark.line + 1
            _walk(path, value_node, loc + (key,), lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[loc + (index,)] = item.start_mark.line + 1
            _walk(path, item, loc + (index,), lines)


def error_at(source: Located, loc: KeyPath, message: str, hint: str | None = None) -> SpecError:
    return SpecError(f"{source.where(loc)}: {message}", hint)


def validation_error(source: Located, exc: ValidationError, prefix: KeyPath = ()) -> SpecError:
    """Turn pydantic's errors into one message listing file:line: key.path: problem for each."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = prefix + tuple(p for p in err["loc"] if not _is_union_tag(p))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; `pipeline schema` lists every key)"
        lines.append(f"{source.where(loc)}: {msg}")
    return SpecError("\n".join(lines[:20]))


def _is_union_tag(part: str | int) -> bool:
    # pydantic inserts the union member's name ("ClusterProfile", "str", "function-after[...]") into loc.
    return isinstance(part, str) and (part[:1].isupper() or part in ("str", "int", "bool") or "[" in part)
