"""The import graph of synthd, read from the source: no circles, and a pure core.

Every ``import`` counts, wherever it is written: at the top, inside a function (deferred)
or under ``if TYPE_CHECKING``. A deferred import hides a circle from Python, not from a
reader, so it is a circle here too.

Each module is declared pure, I/O or shell. A pure module computes from values: it touches
no file, socket, clock-driven loop or environment, and imports no I/O module, so it can be
tested with plain values and reused by the readers (dry-run, export, status) without the
runtime. A new module must be declared here: the test fails until it is.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "synthd"

PURE = frozenset(
    {
        "synthd.chunking",
        "synthd.chunkpreview",
        "synthd.batchfile",
        "synthd.batchresults",
        "synthd.circuit",
        "synthd.config_base",
        "synthd.config_jobs",
        "synthd.cost",
        "synthd.request",
        "synthd.sim.stats",
        "synthd.errors",
        "synthd.exportcheck",
        "synthd.extract",
        "synthd.filters",
        "synthd.fingerprint",
        "synthd.headers",
        "synthd.histogram",
        "synthd.history",
        "synthd.livestatus",
        "synthd.items",
        "synthd.jsonbytes",
        "synthd.models",
        "synthd.neardup",
        "synthd.quality",
        "synthd.reportpage",
        "synthd.prompts",
        "synthd.ratemath",
        "synthd.records",
        "synthd.retry",
        "synthd.sim.config",
        "synthd.sim.content",
        "synthd.sim.faults",
        "synthd.sim.limits",
        "synthd.sim.protocol",
        "synthd.stages",
        "synthd.judge",
    }
)
IO = frozenset(
    {
        "synthd.batchapi",
        "synthd.batchdriver",
        "synthd.batches",
        "synthd.batchpack",
        "synthd.batchstore",
        "synthd.budget",
        "synthd.coordination",
        "synthd.redisclient",
        "synthd.nodes",
        "synthd.sharedbudget",
        "synthd.recovery",
        "synthd.report",
        "synthd.sim.run",
        "synthd.checkpoint",
        "synthd.cli",
        "synthd.client",
        "synthd.crashpoints",
        "synthd.daemon",
        "synthd.scaleout",
        "synthd.batchmode",
        "synthd.reload",
        "synthd.dryrun",
        "synthd.backlog",
        "synthd.projection",
        "synthd.export",
        "synthd.feeder",
        "synthd.admission",
        "synthd.sourcefiles",
        "synthd.looplag",
        "synthd.dirsync",
        "synthd.allowance",
        "synthd.pacer",
        "synthd.memory",
        "synthd.notify",
        "synthd.pipeline",
        "synthd.scanner",
        "synthd.service",
        "synthd.shards",
        "synthd.spool",
        "synthd.status",
        "synthd.statuspage",
        "synthd.watch",
        "synthd.writer",
        "synthd.__main__",
        "synthd.sim",
        "synthd.sim.__main__",
        "synthd.sim.server",
        "synthd.handoff",
        "synthd.nearindex",
        "synthd.stagestore",
        "synthd.sim.batches",
    }
)
# Neither: typed settings and observation that both sides use. ``config`` reads files and
# the environment once at start-up; ``logs``, ``metrics`` and ``progress`` describe.
SHELL = frozenset(
    {
        "synthd",
        "synthd.config",
        "synthd.config_coordination",
        "synthd.logs",
        "synthd.metrics",
        "synthd.monitor",
        "synthd.progress",
    }
)

# Libraries that wait, touch the system or read the environment: never in a pure module.
IO_LIBRARIES = frozenset(
    {
        "aiohttp",
        "aiolimiter",
        "asyncio",
        "openai",
        "os",
        "shutil",
        "signal",
        "socket",
        "sqlite3",
        "subprocess",
        "tempfile",
        "threading",
        "uvloop",
    }
)


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(path: Path, root: Path = PACKAGE.parent) -> Iterator[str]:
    """Every module name ``path`` imports, top-level, deferred or for type checking."""
    module = ".".join(path.relative_to(root).with_suffix("").parts)
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                # ``from synthd import config`` imports the module synthd.config.
                submodule = f"{base}.{alias.name}"
                yield submodule if _is_module(root, submodule) else base


def _is_module(root: Path, name: str) -> bool:
    path = root / Path(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _graph() -> dict[str, set[str]]:
    """Arrows between synthd's own modules."""
    return {
        name: {dep for dep in _imports(path) if dep in MODULES and dep != name}
        for name, path in MODULES.items()
    }


def _libraries(path: Path) -> set[str]:
    return {dep.split(".")[0] for dep in _imports(path) if not dep.startswith("synthd")}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle through each strongly connected group of modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def test_every_module_is_declared_once() -> None:
    declared = PURE | IO | SHELL
    assert len(declared) == len(PURE) + len(IO) + len(SHELL), "a module declared twice"
    assert sorted(set(MODULES) - declared) == [], "declare new modules as PURE, IO or SHELL"
    assert sorted(declared - set(MODULES)) == [], "declared modules that do not exist"


def test_the_import_graph_has_no_cycles() -> None:
    assert _cycles(_graph()) == []


def test_no_arrow_from_a_pure_module_to_an_io_module() -> None:
    graph = _graph()
    arrows = sorted((m, dep) for m in PURE for dep in graph[m] if dep in IO)
    assert arrows == []


@pytest.mark.parametrize("module", sorted(PURE))
def test_a_pure_module_uses_no_io_library(module: str) -> None:
    assert _libraries(MODULES[module]) & IO_LIBRARIES == set()


def test_only_config_reads_the_environment() -> None:
    readers = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in {"environ", "getenv", "environb"}:
                readers.append(name)
    assert sorted(set(readers)) == ["synthd.config"]


# -- the checks themselves catch what they claim to ------------------------------------


def test_a_deferred_import_is_an_arrow(tmp_path: Path) -> None:
    source = tmp_path / "synthd" / "a.py"
    source.parent.mkdir()
    for name in ("__init__", "b", "c", "d"):
        (tmp_path / "synthd" / f"{name}.py").touch()
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from synthd.b import B\n"
        "def f():\n    from synthd import c\n    from . import d\n",
        encoding="utf-8",
    )
    names = set(_imports(source, tmp_path))
    assert {"synthd.b", "synthd.c", "synthd.d"} <= names


def test_a_circle_is_found() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
