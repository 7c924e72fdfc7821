"""The architecture holds: import contracts kept, no import cycle between modules, no module grown past ~500 lines
without a written reason.

The contracts themselves (layers vpp > markets > fleet > chargers, the edge agent apart) live in ``pyproject.toml``
and are checked by ``lint-imports`` (``make lint``, ``.ci/run``); this test runs the same check so the test command
alone catches a broken layer.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("chargers", "fleet", "markets", "vpp", "edge_agent")
MAX_LINES = 500
# A module longer than MAX_LINES says why near its top, in a line starting with this marker.
LONG_MODULE_MARKER = "Why one module:"


def _project_modules(graph: grimp.ImportGraph) -> set[str]:
    return {m for m in graph.modules if m.split(".")[0] in PACKAGES and ".migrations" not in m}


def _strongly_connected(nodes: set[str], edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative: every group of modules that import each other, directly or not."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    counter = 0
    for root in sorted(nodes):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    return groups


def test_the_import_contracts_are_kept() -> None:
    # Given the contracts in pyproject.toml, when lint-imports checks the code, then none is broken.
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_no_modules_import_each_other_in_a_circle() -> None:
    # Function-local imports count: grimp reads every import statement, wherever it stands.
    graph = grimp.build_graph(*PACKAGES)
    modules = _project_modules(graph)
    edges = {m: graph.find_modules_directly_imported_by(m) & modules for m in modules}
    assert _strongly_connected(modules, edges) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    # The check above must be able to fail: a -> b -> c -> a is one group, d stands alone.
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _strongly_connected(set(edges), edges) == [["a", "b", "c"]]


def _long_modules_without_a_reason() -> list[str]:
    offenders = []
    folders = [ROOT / p for p in PACKAGES if p != "edge_agent"] + [ROOT / "edge_agent" / "src", ROOT / "bench"]
    for base in [*folders, ROOT / "tests"]:
        for path in base.rglob("*.py"):
            if "migrations" in path.parts:
                continue
            lines = path.read_text().splitlines()
            if len(lines) > MAX_LINES and not any(LONG_MODULE_MARKER in line for line in lines[:40]):
                offenders.append(f"{path.relative_to(ROOT)} ({len(lines)} lines)")
    return sorted(offenders)


def test_no_module_grows_past_500_lines_without_a_reason() -> None:
    assert _long_modules_without_a_reason() == []
