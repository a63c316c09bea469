"""The house: the package layout keeps its promises, checked from the source itself.

- No import cycle among the modules of `scaling/` and `analysis/`, counting every import
  (module level, deferred inside a function, or under TYPE_CHECKING): a cycle a reader
  cannot see is still one in the design.
- No module imports another module's private names (`from x import _y`).
- `analysis/` never imports `scaling/`, nor `scaling/` `analysis/` (results flow one way:
  run folders -> analysis, which scaling/ runs as a separate process).
- A module over MAX_LINES lines says in its docstring why it must be one file
  (a paragraph starting "One file:").
- Every shipped experiment plans into exactly the point ids it had before the packages were
  rearranged (tests/data/point_ids.json), so an existing sweep folder resumes into the same
  points.
"""

from __future__ import annotations

import ast
import functools
import json
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("scaling", "analysis")
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for p in sorted((ROOT / pkg).rglob("*.py")):
            parts = p.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = p
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> list[tuple[str, str | None, int]]:
    """(target module, imported name or None, line) for every import of a project module."""
    out = []
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in PACKAGES:
                    out.append((a.name, None, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = name.split(".") if is_pkg else name.split(".")[:-1]
                here = here[: len(here) - (node.level - 1)]
                base = ".".join(here + ([base] if base else []))
            if base.split(".")[0] not in PACKAGES:
                continue
            for a in node.names:
                if f"{base}.{a.name}" in mods:
                    out.append((f"{base}.{a.name}", None, node.lineno))
                else:
                    out.append((base, a.name, node.lineno))
    return out


@functools.cache  # parsed once for the four tests that read it (~1.2 s each)
def _graph() -> tuple[dict[str, set[str]], list[str]]:
    mods = _modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    private = []
    for m, p in mods.items():
        for target, imported, line in _imports(m, p, mods):
            if target in mods and target != m:
                edges[m].add(target)
            if imported and imported.startswith("_") and not imported.startswith("__") \
                    and target != m:
                private.append(f"{p.relative_to(ROOT)}:{line} imports {target}.{imported}")
    return edges, private


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_cycle_finder_finds_a_cycle():
    # the check itself can fail: a -> b -> c -> a is found, a DAG is not
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_import_cycles():
    edges, _ = _graph()
    assert _cycles(edges) == []


def test_no_private_cross_module_imports():
    _, private = _graph()
    assert private == []


def test_analysis_never_imports_scaling():
    edges, _ = _graph()
    bad = sorted(f"{m} -> {t}" for m, ts in edges.items() if m.startswith("analysis")
                 for t in ts if t.startswith("scaling"))
    assert bad == []


def test_scaling_never_imports_analysis():
    # scaling/ runs the analysis as a separate process (`python -m analysis ...`) only
    edges, _ = _graph()
    bad = sorted(f"{m} -> {t}" for m, ts in edges.items() if m.startswith("scaling")
                 for t in ts if t.startswith("analysis"))
    assert bad == []


def test_long_modules_say_why_they_are_one_file():
    long = []
    for m, p in _modules().items():
        n = len(p.read_text(encoding="utf-8").splitlines())
        if n > MAX_LINES:
            doc = ast.get_docstring(ast.parse(p.read_text(encoding="utf-8"))) or ""
            if "One file:" not in doc:
                long.append(f"{p.relative_to(ROOT)} ({n} lines)")
    assert long == []


def test_point_ids_unchanged(monkeypatch):
    from tests.test_sweep_plan import shipped  # each experiment planned once per session

    monkeypatch.setenv("SCALINGLAB_ACHIEVED_FLOPS", "5e10")
    golden = json.loads((ROOT / "tests" / "data" / "point_ids.json").read_text())
    assert sorted(golden) == sorted(p.stem for p in (ROOT / "experiments").glob("*.toml"))
    for name, ids in golden.items():
        spec = shipped(f"{name}.toml")
        assert [p.point_id for p in spec.points] == ids, name
