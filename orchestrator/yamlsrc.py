"""YAML loading that remembers where every key came from, so errors can name file, line and key path."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from orchestrator.errors import SpecError

KeyPath = tuple[str | int, ...]
MAX_SPEC_BYTES = 1_000_000  # a pipeline spec is a few KiB; anything this large is a mistake, not a spec


@dataclass(frozen=True)
class Located:
    """Parsed YAML data plus a map from key path to 1-based line number."""

    path: Path
    data: Any
    lines: dict[KeyPath, int] = field(default_factory=dict)

    def line_of(self, loc: KeyPath) -> int:
        """Line of the deepest existing ancestor of loc (a missing key is reported at its parent)."""
        for cut in range(len(loc), -1, -1):
            if loc[:cut] in self.lines:
                return self.lines[loc[:cut]]
        return 1

    def where(self, loc: KeyPath) -> str:
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
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
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
