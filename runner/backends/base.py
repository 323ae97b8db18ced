"""The seam between the CLI and wherever containers really run.

The CLI talks only to a :class:`Backend`; it never imports the engine or the runtime, so it imports cleanly on
macOS and Windows. Both backends expose the *engine's* API unchanged: ``NativeBackend`` calls the
:class:`runner.engine.engine.Engine` in-process, ``VMBackend`` sends the same calls to the same Engine running
in the guest through the agent. Arguments and results are JSON-safe data (dicts, lists, str, int), so the
VM path needs no per-method code; only streams (stdio, tar archives) and live process handles differ, and
those are the small types of :mod:`runner.stdio`.

Optional abilities are data (:class:`Features`), read by callers instead of asking "which backend is this?".
"""

from __future__ import annotations

from runner.records import FrozenRecord

# typing is imported for type checkers only: at run time it costs every CLI call ~6 ms. The protocol below is
# then a plain class (nothing instantiates it or checks isinstance against it).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from runner.engine.engine import Engine as _Operations
else:
    _Operations = object


class Features(FrozenRecord):
    """What a backend can do, so callers check abilities rather than backend names."""

    _fields = ("bind_mounts", "host_network", "published_ports")

    def __init__(self, bind_mounts: bool = True, host_network: bool = True, published_ports: bool = False):
        self._init(bind_mounts=bind_mounts, host_network=host_network, published_ports=published_ports)


class Backend(_Operations):
    """Every container and image operation the CLI needs. Containers are named by id, id prefix or name.

    The operations are not listed here a second time: they are the public methods of
    :class:`runner.engine.engine.Engine` (the type checker's view of this class), served natively by calling
    them and through the VM by :mod:`runner.backends.agent`, which is generated from the agent protocol's one
    method table (``runner.agent.protocol.METHODS``). Adding an operation touches the engine, that table and the
    CLI; tests/unit/test_method_table.py proves the engine and the table agree.
    """

    name: str
    features: Features
