"""The package's structure rules, checked by reading hub/'s source with `ast` (nothing is imported or run).

1. No module longer than 500 lines.
2. No import cycle among hub modules, counting module-level imports only.
3. aiohttp.web only under hub/web/.
4. SQL statements only in hub/store/ and the .gsa reader.
5. No HTML, CSS or JS in Python strings: markup lives in hub/web/templates and hub/web/static.
"""

from __future__ import annotations

import ast
import functools
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

HUB = Path(__file__).resolve().parents[2] / "hub"
ROOT = HUB.parent
MAX_LINES = 500


@dataclass(frozen=True)
class Module:
    name: str  # dotted, e.g. hub.forward.loop (a package's __init__ is the package's name)
    path: Path
    tree: ast.Module
    lines: int

    @property
    def rel(self) -> str:
        return self.path.relative_to(ROOT).as_posix()

    @property
    def is_package(self) -> bool:
        return self.path.name == "__init__.py"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@functools.cache
def modules() -> tuple[Module, ...]:
    found = []
    for path in sorted(HUB.rglob("*.py")):
        source = path.read_text("utf-8")
        found.append(Module(module_name(path), path, ast.parse(source, str(path)), len(source.splitlines())))
    return tuple(found)


def test_the_scan_finds_the_package():
    names = {m.name for m in modules()}
    assert {"hub", "hub.config", "hub.health"} <= names, sorted(names)


# 1. Module length -------------------------------------------------------------------------------------------------


def test_no_module_longer_than_500_lines():
    long = [
        f"{m.rel}:{MAX_LINES + 1}: {m.lines} lines, over the limit of {MAX_LINES} from this line on"
        for m in modules()
        if m.lines > MAX_LINES
    ]
    assert not long, "modules over the length limit; split them:\n" + "\n".join(long)


# 2. Import cycles -------------------------------------------------------------------------------------------------


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_time_imports(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: top level, inside if/try/with/class bodies, but not
    inside functions and not under `if TYPE_CHECKING:` (its `else:` does run)."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        elif isinstance(node, ast.If):
            if not is_type_checking(node.test):
                yield from import_time_imports(node.body)
            yield from import_time_imports(node.orelse)
        elif isinstance(node, ast.ClassDef):
            yield from import_time_imports(node.body)
        elif isinstance(node, (ast.Try, ast.TryStar)):
            for part in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                yield from import_time_imports(part)
        elif isinstance(node, (ast.With, ast.AsyncWith, ast.For, ast.AsyncFor, ast.While)):
            yield from import_time_imports(node.body)
            yield from import_time_imports(getattr(node, "orelse", []))
        elif isinstance(node, ast.Match):
            for case in node.cases:
                yield from import_time_imports(case.body)


def resolve_from(module: Module, node: ast.ImportFrom) -> str:
    """The absolute module name an ImportFrom reads from (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    package = module.name.split(".") if module.is_package else module.name.split(".")[:-1]
    if node.level > 1:
        package = package[: len(package) - (node.level - 1)]
    return ".".join([*package, node.module] if node.module else package)


def known_prefix(name: str, known: set[str]) -> str | None:
    """The longest hub module that `name` is or lies in (import a.b.c runs a.b.c, found as a file)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in known:
            return candidate
        parts.pop()
    return None


def imported_modules(module: Module, known: set[str]) -> Iterator[tuple[str, int]]:
    """(hub module, line) for every import-time import of another hub module."""
    for node in import_time_imports(module.tree.body):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = resolve_from(module, node)
            # `from pkg import sub` imports the submodule pkg.sub; `from mod import name` imports mod.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for target in targets:
            if target == "hub" or target.startswith("hub."):
                found = known_prefix(target, known)
                if found and found != module.name:
                    yield found, node.lineno


def import_graph() -> tuple[dict[str, dict[str, int]], dict[str, str]]:
    """module -> {imported module: first line}, and module -> file (hub/share.py and hub/share/ share a name:
    the first file found keeps it, both files' imports count)."""
    known = {m.name for m in modules()}
    graph: dict[str, dict[str, int]] = {name: {} for name in known}
    files: dict[str, str] = {}
    for m in modules():
        files.setdefault(m.name, m.rel)
        for target, line in imported_modules(m, known):
            graph[m.name].setdefault(target, line)
            files.setdefault(f"{m.name}->{target}", f"{m.rel}:{line}")
    return graph, files


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (as a path a -> ... -> a) per strongly connected component with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)

    cycles = []
    for component in components:
        members = set(component)
        start = component[0]
        # Shortest path back to `start` inside the component (breadth first): the cycle to report.
        paths = {start: [start]}
        queue = [start]
        cycle = None
        while queue and cycle is None:
            v = queue.pop(0)
            for w in sorted(graph[v]):
                if w == start:
                    cycle = [*paths[v], start]
                    break
                if w in members and w not in paths:
                    paths[w] = [*paths[v], w]
                    queue.append(w)
        assert cycle is not None
        cycles.append(cycle)
    return cycles


def test_cycle_finder_finds_a_cycle_and_ignores_a_tree():
    assert find_cycles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b": 1, "c": 1}, "b": {"c": 1}, "c": {}}) == []


def test_import_resolution_reads_relative_type_checking_and_function_imports_right():
    source = (
        "from __future__ import annotations\n"
        "from typing import TYPE_CHECKING\n"
        "from . import b\n"
        "from .. import other\n"
        "from .c import thing\n"
        "import hub.pkg.d\n"
        "if TYPE_CHECKING:\n"
        "    from .e import Hint\n"
        "else:\n"
        "    from .f import Real\n"
        "try:\n"
        "    from .g import fast\n"
        "except ImportError:\n"
        "    pass\n"
        "def later():\n"
        "    from .h import lazy\n"
    )
    m = Module("hub.pkg.a", HUB / "pkg" / "a.py", ast.parse(source), 0)
    known = {"hub", "hub.other", "hub.pkg", *(f"hub.pkg.{x}" for x in "abcdefgh")}
    assert sorted(t for t, _ in imported_modules(m, known)) == [
        "hub.other",
        "hub.pkg.b",
        "hub.pkg.c",
        "hub.pkg.d",
        "hub.pkg.f",
        "hub.pkg.g",
    ]
    init = Module("hub.pkg", HUB / "pkg" / "__init__.py", ast.parse("from .a import x\nfrom .. import y\n"), 0)
    assert sorted(t for t, _ in imported_modules(init, known)) == ["hub", "hub.pkg.a"]


def test_the_import_graph_sees_known_edges():
    graph, _ = import_graph()
    assert "hub.config" in graph["hub.health"]
    assert "hub.forward.sink" in graph["hub.forward.sunbird_http"]


def test_no_import_cycles_among_hub_modules():
    graph, where = import_graph()
    cycles = find_cycles(graph)
    report = []
    for cycle in cycles:
        report.append(" -> ".join(cycle))
        report.extend(f"    {where[f'{a}->{b}']}: {a} imports {b}" for a, b in itertools.pairwise(cycle))
    assert not cycles, "import cycles (module-level imports) among hub modules:\n" + "\n".join(report)


# 3. aiohttp.web only under hub/web/ --------------------------------------------------------------------------------


def web_imports(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """Every import of aiohttp.web (anywhere in the file, functions included)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "aiohttp.web" or alias.name.startswith(("aiohttp.web.", "aiohttp.web_")):
                    yield node.lineno, f"import {alias.name}"
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            if node.module == "aiohttp" and any(a.name == "web" or a.name.startswith("web_") for a in node.names):
                yield node.lineno, f"from aiohttp import {', '.join(a.name for a in node.names)}"
            elif node.module == "aiohttp.web" or node.module.startswith(("aiohttp.web.", "aiohttp.web_")):
                yield node.lineno, f"from {node.module} import ..."


def test_aiohttp_web_is_imported_only_under_hub_web():
    offenders = [
        f"{m.rel}:{line}: {what}"
        for m in modules()
        if not m.rel.startswith("hub/web/")
        for line, what in web_imports(m.tree)
    ]
    assert not offenders, "aiohttp.web imported outside hub/web/:\n" + "\n".join(offenders)


# String constants --------------------------------------------------------------------------------------------------


_DOCUMENTED = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


@functools.cache
def string_constants(m: Module) -> tuple[tuple[int, str], ...]:
    """(line, text) of every str constant except docstrings (prose, not values the code uses); f-string parts
    are included (ast gives each literal part of an f-string as its own Constant). One walk per module."""
    docstrings: set[int] = set()
    found = []
    for node in ast.walk(m.tree):
        if isinstance(node, _DOCUMENTED) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.append(node)
    # ast.walk is breadth first: a docstring's owner is always visited before the docstring itself.
    return tuple((node.lineno, node.value) for node in found if id(node) not in docstrings)


def shown(text: str) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= 70 else text[:67] + "...")


# 4. SQL only in hub/store/ and the .gsa reader ---------------------------------------------------------------------

SQL_START = re.compile(
    r"\A\s*(SELECT\s|INSERT\s|UPDATE\s|DELETE\s+FROM\b|CREATE\s+TABLE\b|CREATE\s+INDEX\b|PRAGMA\s|DROP\s)",
    re.IGNORECASE,
)

# The .gsa reader reads another program's SQLite file, so it alone outside the store may speak SQL.
GSA_READER = "hub/share/gsa.py"


def sql_allowed(rel: str) -> bool:
    return rel.startswith("hub/store/") or rel == GSA_READER


def test_the_gsa_reader_is_where_the_sql_rule_expects_it():
    assert (ROOT / GSA_READER).is_file(), f"{GSA_READER} moved: update GSA_READER in {Path(__file__).name}"


def test_sql_pattern():
    for sql in [
        "SELECT 1",
        "  select id from events",
        "INSERT INTO t VALUES (?)",
        "update t set a=1",
        "DELETE FROM t",
        "create table t (a)",
        "CREATE INDEX i ON t(a)",
        "PRAGMA user_version",
        "\n    DROP TABLE t",
    ]:
        assert SQL_START.match(sql), sql
    for text in ["selected", "Deleted 3 files", "created tables", "update", "pragmatic", "dropped"]:
        assert not SQL_START.match(text), text


def test_the_sql_scan_sees_the_stores_sql():
    """Not vacuous: the scan does find the SQL that is allowed to be there."""
    in_store = [text for m in modules() if m.rel.startswith("hub/store/") for _, text in string_constants(m)]
    assert any(SQL_START.match(text) for text in in_store)


def test_sql_only_in_the_store_and_the_gsa_reader():
    offenders = [
        f"{m.rel}:{line}: {shown(text)}"
        for m in modules()
        if not sql_allowed(m.rel)
        for line, text in string_constants(m)
        if SQL_START.match(text)
    ]
    assert not offenders, "SQL outside hub/store/ and the .gsa reader:\n" + "\n".join(offenders)


# 5. No HTML/CSS/JS in Python strings -------------------------------------------------------------------------------

MARKUP = re.compile(
    r"<html|<!doctype|<div|<section|<style|<script|<form|</[a-z][a-z0-9-]*"  # HTML and JS carriers
    r"|\{\s*font\s*:|;\s*margin\s*:",  # CSS
    re.IGNORECASE,
)


def test_markup_pattern():
    for text in [
        "<html>",
        "<!DOCTYPE html>",
        "<div class=x>",
        "<section>",
        "<style>",
        "<script src=a>",
        "<form method=post>",
        "text</p>",
        "</td >",
        "p{font:12px sans}",
        "a{color:red;margin:0}",
    ]:
        assert MARKUP.search(text), text
    for text in ["a < b", "x <= y", "</ 3", "{font}", "margin: 0 is a word", "2 </3"]:
        assert not MARKUP.search(text), text


def test_no_html_css_or_js_in_python_strings():
    offenders = [
        f"{m.rel}:{line}: {shown(text)}" for m in modules() for line, text in string_constants(m) if MARKUP.search(text)
    ]
    assert not offenders, "markup in Python strings (move it to hub/web/templates/ or static/):\n" + "\n".join(
        offenders
    )


@pytest.mark.parametrize("rel", ["hub/web/templates", "hub/web/static"])
def test_markup_has_somewhere_to_live(rel):
    assert (ROOT / rel).is_dir()
