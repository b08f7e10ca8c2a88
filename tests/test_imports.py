"""The package has no import cycle: every ``src`` import (module level or inside a function) is
an edge, and the graph of src modules must be acyclic, so any module can be imported on its own."""
import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _module(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    mods = {_module(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(pkg.split(".")[: len(pkg.split(".")) - node.level + 1] + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            for n in names:
                if n in mods and n != mod:
                    graph[mod].add(n)
    return graph


def find_cycle(graph):
    state, stack = {}, []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (c := visit(n)):
                return c
        state[m] = 2
        stack.pop()
        return None

    for m in sorted(graph):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_no_import_cycle_in_src():
    graph = import_graph()
    assert len(graph) > 30 and "src.pipeline" in graph["src.main"]  # the graph was actually read
    assert find_cycle(graph) is None, " → ".join(find_cycle(graph))


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def _calls(path: Path, name: str) -> int:
    return sum(isinstance(n, ast.Call) and getattr(n.func, "id", getattr(n.func, "attr", None)) == name
               for n in ast.walk(ast.parse(path.read_text())))


def test_device_resolved_once_and_training_never_sees_the_job_config():
    """One ``resolve_device`` call in ``src`` (in ``main.run``); the stages take the resolved device.
    The training paths read a ``Recipe`` (the train and model nodes), never the job config: no
    attribute of a ``cfg`` name (``cfg.dataset``, ``cfg.get``, ...) in ``src/training`` outside
    ``recipe.py``, whose ``Recipe.of`` builds the recipe from it."""
    assert {p.relative_to(SRC).as_posix(): _calls(p, "resolve_device") for p in SRC.rglob("*.py")
            if _calls(p, "resolve_device")} == {"main.py": 1}
    for path in (SRC / "training").glob("*.py"):
        if path.name == "recipe.py":
            continue
        uses = [n.lineno for n in ast.walk(ast.parse(path.read_text()))
                if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "cfg"]
        assert uses == [], f"{path.name}: the job config read at lines {uses}"
