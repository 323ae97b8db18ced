"""The Engine and the agent's method table name the same methods with the same arguments; the Backend adds none.

Why: the VM path is generated from the table (runner.backends.agent), so the table is what keeps the engine
served in the guest; adding an engine method must fail here until the table has it too. The Engine is read
with ``ast`` (not imported): it is Linux-only, and unit tests run on any OS.
"""

import ast
import inspect
from pathlib import Path

from runner.agent import protocol as P
from runner.backends.agent import AgentBackend
from runner.backends.base import Backend

ROOT = Path(__file__).resolve().parents[2]
# Public Engine methods that are the engine's own plumbing (called by the shim or the store), not Backend calls.
ENGINE_INTERNAL = {"runtime", "runtime_for", "images_store", "bundle", "bundle_dir", "empty_dir", "log_path",
                   "remove_container_files", "journal", "journal_container"}


def _engine_methods() -> dict[str, list[str]]:
    tree = ast.parse((ROOT / "runner/engine/engine.py").read_text())
    engine = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Engine")
    out = {}
    for node in engine.body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_") and node.name not in ENGINE_INTERNAL:
            out[node.name] = [a.arg for a in node.args.args[1:] + node.args.kwonlyargs]
    return out


def _table() -> dict[str, list[str]]:
    return {name: [p.name for p in m.params] for name, m in P.METHODS.items() if name not in P.AGENT_ONLY}


def test_engine_and_table_have_the_same_methods_and_arguments():
    assert _engine_methods() == _table()


def test_the_backend_declares_no_operation_a_second_time():
    """The Backend's operations are the Engine's (its type-checking base), not a sixth copy of the list: adding
    an engine method touches only the engine, the method table and the CLI."""
    tree = ast.parse((ROOT / "runner/backends/base.py").read_text())
    backend = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Backend")
    assert [b.id for b in backend.bases] == ["_Operations"]
    assert not [n.name for n in backend.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    assert "from runner.engine.engine import Engine as _Operations" in ast.unparse(tree)
    assert set(vars(Backend)) >= {"__annotations__"} and Backend.__annotations__ == {"name": "str",
                                                                                   "features": "Features"}


def test_agent_backend_is_generated_for_every_method():
    for name in _table():
        assert getattr(AgentBackend, name).__name__ == name
    assert not hasattr(AgentBackend, "ping")  # the agent's own method is not a Backend call


class _RecordingClient:
    lost = False  # a live connection (runner.agent.client.AgentClient.lost)

    def __init__(self):
        self.calls = []

    def call(self, method, args=None, progress=None):
        self.calls.append((method, args, progress))
        return {"ps": [], "stop": "c1", "run": "c1", "pull": {}}[method]


def test_generated_methods_bind_like_python_and_send_only_given_arguments():
    import pytest

    client = _RecordingClient()
    backend = AgentBackend(lambda: client)
    events = []
    assert backend.stop("c1") == "c1"
    assert backend.stop("c1", timeout=3) == "c1"
    backend.ps(True)
    backend.run({"image": "x"}, None)
    backend.pull("alpine", progress=events.append, endpoints={"a": "b"})
    assert client.calls == [
        ("stop", {"ref": "c1"}, None),  # the engine's default timeout applies: it is not sent
        ("stop", {"ref": "c1", "timeout": 3}, None),
        ("ps", {"all": True}, None),
        ("run", {"spec": {"image": "x"}}, None),  # stdio None: detached, a plain call
        ("pull", {"ref": "alpine", "endpoints": {"a": "b"}}, events.append),
    ]
    with pytest.raises(TypeError, match="missing required argument 'ref'"):
        backend.stop()
    with pytest.raises(TypeError, match="multiple values"):
        backend.stop("c1", ref="c2")
    with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
        backend.ps(bogus=1)
    with pytest.raises(TypeError, match="takes 2 arguments"):
        backend.stop("c1", 3, 4)


def test_upload_methods_take_the_stream_first():
    """The agent calls an upload method with the stream as its first positional argument (server._simple)."""
    for m in P.METHODS.values():
        if m.kind == P.UPLOAD:
            assert m.params[0].name == "stream", m.name
