"""`--set key.path=value` (issue 14 item 4): change one value of a pipeline file from the command line.

The value is YAML (`yaml.safe_load`: `lr=2e-4` is a float, `nodes=2` an int, `tags=[a, b]` a list), set into
the parsed file before validation, so an override is validated exactly like the file and an error names the
override (`--set stages.finetune.params.lr=abc: stages[1].params.lr: ...`). `stages` is a list in YAML: a stage is
addressed by its name (`stages.finetune.params.lr`) or its index (`stages.1.params.lr`). The effective spec, with
the overrides applied, is what the run directory stores (effective_text).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from typing import Any

import yaml

from orchestrator import yamlsrc
from orchestrator.errors import SpecError

HINT = "write --set KEY.PATH=VALUE, e.g. --set stages.finetune.params.lr=2e-4 (a stage by name or index)"


@dataclasses.dataclass(frozen=True)
class Override:
    text: str  # as given, for messages
    parts: tuple[str, ...]
    value: Any


def parse(text: str) -> Override:
    key, sep, raw = text.partition("=")
    parts = tuple(key.strip().split("."))
    if not sep or not key.strip() or any(not p for p in parts):
        raise SpecError(f"--set {text}: not KEY.PATH=VALUE", HINT)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise SpecError(f"--set {text}: the value is not valid YAML ({getattr(exc, 'problem', None) or exc})",
                        "quote it for the shell and for YAML, e.g. --set 'stages.a.run=echo \"x: y\"'") from None
    return Override(text, parts, value)


def apply(source: yamlsrc.Located, texts: Sequence[str]) -> yamlsrc.Located:
    """The located spec with every override set (later ones win); each overridden key path is remembered so a
    validation error there names the override instead of a line of the file."""
    if not texts:
        return source
    if not isinstance(source.data, dict):
        raise SpecError(f"{source.path}:1: a pipeline file must be a mapping before --set can change it")
    data = copy.deepcopy(source.data)
    origins = dict(source.origins)
    for text in texts:
        override = parse(text)
        loc = _set(data, override)
        origins = {k: v for k, v in origins.items() if k[:len(loc)] != loc}  # a later override wins
        origins[loc] = text
    return dataclasses.replace(source, data=data, origins=origins, overrides=source.overrides + tuple(texts))


def _set(data: dict[str, Any], override: Override) -> yamlsrc.KeyPath:
    node: Any = data
    loc: list[str | int] = []
    parts = list(override.parts)
    while parts:
        part = parts.pop(0)
        last = not parts
        if isinstance(node, list):
            index, used = _index(node, part, parts, loc, override)
            del parts[:used]
            last = not parts
            loc.append(index)
            if last:
                node[index] = override.value
                return tuple(loc)
            node = node[index]
            continue
        if not isinstance(node, dict):
            raise SpecError(f"--set {override.text}: {yamlsrc.format_loc(tuple(loc))} is "
                            f"{type(node).__name__} {node!r}, not a mapping", HINT)
        loc.append(part)
        if last:
            node[part] = override.value
            return tuple(loc)
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
    raise AssertionError("unreachable: parse() refuses an empty key")


def _index(node: list[Any], part: str, rest: list[str], loc: list[str | int], override: Override) -> tuple[int, int]:
    """The list index `part` names: a number, or (for stages) a stage name, which may contain dots: the longest
    run of parts that names a stage wins. Returns (index, how many of `rest` the name used)."""
    where = yamlsrc.format_loc(tuple(loc))
    if part.isdigit():
        index = int(part)
        if index >= len(node):
            raise SpecError(f"--set {override.text}: {where} has {len(node)} entries, no [{index}]", HINT)
        return index, 0
    names = [item.get("name") if isinstance(item, dict) else None for item in node]
    for used in range(len(rest), -1, -1):
        name = ".".join([part, *rest[:used]])
        if name in names:
            return names.index(name), used
    known = ", ".join(str(n) for n in names if n is not None) or "none"
    raise SpecError(f"--set {override.text}: {where} has no entry named {part!r} (names: {known})", HINT)


def effective_text(source: yamlsrc.Located) -> str:
    """What the run directory stores as its spec: the file as written, or, with overrides, the file's data with
    them applied (comments are lost then, so the overrides are listed at the top)."""
    if not source.overrides:
        return yamlsrc.read_text(source.path)
    header = "".join(f"#   --set {text}\n" for text in source.overrides)
    body = yaml.safe_dump(source.data, sort_keys=False, allow_unicode=True)
    return f"# effective spec: {source.path} with\n{header}{body}"
