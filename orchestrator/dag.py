"""Pure DAG helpers over {stage: [parents]} mappings (insertion order is the tie-breaker everywhere)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence


def find_cycle(parents: Mapping[str, Sequence[str]]) -> list[str]:
    """Return one cycle as [a, b, ..., a], or [] if the graph is acyclic."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for parent in parents.get(node, ()):
            if state.get(parent) == 1:
                return path[path.index(parent):] + [parent]
            if parent not in state:
                found = visit(parent)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return []

    for node in parents:
        if node not in state:
            found = visit(node)
            if found:
                return list(reversed(found))
    return []


def topological(parents: Mapping[str, Sequence[str]]) -> list[str]:
    """Stages ordered so every parent comes before its children; stable w.r.t. the mapping's order."""
    order: list[str] = []
    placed: set[str] = set()
    remaining = list(parents)
    while remaining:
        ready = [n for n in remaining if all(p in placed for p in parents[n])]
        if not ready:
            raise ValueError(f"dependency cycle among {remaining}")
        for node in ready:
            order.append(node)
            placed.add(node)
        remaining = [n for n in remaining if n not in placed]
    return order


def downstream(parents: Mapping[str, Sequence[str]], roots: Iterable[str]) -> set[str]:
    """The roots plus every stage that depends on one of them, directly or not."""
    found = set(roots)
    changed = True
    while changed:
        changed = False
        for node, node_parents in parents.items():
            if node not in found and any(p in found for p in node_parents):
                found.add(node)
                changed = True
    return found


def upstream(parents: Mapping[str, Sequence[str]], node: str) -> set[str]:
    """Every stage that node waits for, directly or not."""
    seen: set[str] = set()
    todo = list(parents.get(node, []))
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(parents.get(current, []))
    return seen
