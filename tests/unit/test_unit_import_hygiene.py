"""The pure modules must not pull in the network stack."""

from __future__ import annotations

import subprocess
import sys

PURE = ["signaling.core", "signaling.directory", "signaling.inbox", "signaling.protocol", "signaling.auth",
        "signaling.session", "signaling.frames", "signaling.bus.retention"]


def test_pure_modules_do_not_import_aiohttp_redis_or_asyncio():
    # (sans-I/O: asyncio is the event loop, so a module that never imports it cannot await)
    code = (
        "import sys\n"
        "sys.modules['asyncio'] = None\n"  # importing it raises: catches `import asyncio` anywhere below
        f"for name in {PURE!r}: __import__(name)\n"
        "print(','.join(sorted(m for m in ('aiohttp', 'redis') if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == ""


def _import_graph() -> dict[str, set[str]]:
    """signaling's modules -> the signaling modules each imports, type-only imports included
    (a cycle through `if TYPE_CHECKING:` is still two modules that must change together)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "signaling"
    names = {".".join(("signaling", *p.relative_to(root).with_suffix("").parts)).removesuffix(".__init__"): p
             for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in names.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package
                for _ in range(max(node.level - 1, 0)):
                    base = base.rpartition(".")[0]
                target = (f"{base}.{node.module}" if node.module else base) if node.level else (node.module or "")
                for alias in node.names:  # `from . import bus` imports a module
                    edges.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in names else target)
            elif isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names)
        graph[name] = {e for e in edges if e in names and e != name}
    return graph


def test_no_import_cycles_between_modules():
    graph = _import_graph()
    # a package's __init__ re-exports its modules: a module importing its own package is not a cycle
    for name in graph:
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        path.append(name)
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(target):] + [target]))
            if target not in state:
                visit(target)
        path.pop()
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_the_layers_only_import_downwards():
    # cli -> server -> app -> peer_socket -> node / session -> core <- bus: nothing below imports what is above it
    graph = _import_graph()
    above = {"signaling.core": {"signaling.session", "signaling.peer_socket", "signaling.node", "signaling.app",
                                "signaling.server", "signaling.cli", "signaling.bus"},
             "signaling.session": {"signaling.peer_socket", "signaling.node", "signaling.app", "signaling.server",
                                   "signaling.cli", "signaling.bus"},
             "signaling.peer_socket": {"signaling.app", "signaling.server", "signaling.cli"},
             "signaling.node": {"signaling.session", "signaling.peer_socket", "signaling.app", "signaling.server",
                                "signaling.cli"},
             "signaling.app": {"signaling.server", "signaling.cli"}}
    for module, forbidden in above.items():
        assert not graph[module] & forbidden, f"{module} imports {sorted(graph[module] & forbidden)}"
    for name, targets in graph.items():
        if name.startswith("signaling.bus"):
            assert not targets & {"signaling.session", "signaling.peer_socket", "signaling.node", "signaling.app",
                                  "signaling.server"}, name
