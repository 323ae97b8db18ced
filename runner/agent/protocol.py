"""The agent protocol: how the host's runner talks to the resident agent in the VM. Messages only, no I/O.

The agent (``runner.agent.server``) serves the very same :class:`runner.engine.engine.Engine` the native
backend calls in-process. Each CLI call opens one byte stream to it (a paramiko ``direct-tcpip`` channel, or
a plain socket in tests) and speaks this protocol. Both ends keep this module: it is shipped into the guest
with the engine, and its version is a hash of the shipped source, so host and guest either run identical
code or refuse each other with a clear message.

Every frame has a fixed 10-byte header and a bounded payload::

     0        1        2                                6                                10
    +--------+--------+--------------------------------+--------------------------------+-------------+
    |  kind  | stream |        call id (u32, BE)       |      payload length (u32, BE)  |   payload   |
    +--------+--------+--------------------------------+--------------------------------+-------------+

``kind`` says what the payload is (JSON object, raw bytes, or empty); ``stream`` is only non-zero on DATA
and EOF frames (0 stdin, 1 stdout, 2 stderr, 3 blob = a tar archive for load/save/import); ``call id``
matches every frame to the request it belongs to (0 = the handshake), so several calls can share one
connection and a reply can never be taken for another call's. JSON payloads are at most
``MAX_JSON`` bytes, DATA payloads at most ``MAX_DATA``; a larger length is refused before it is read.

A session, seen from both ends::

    client (host)                                         agent (guest)
    ─────────────                                         ─────────────
                                  ◄── CHALLENGE  0 {version, nonce}
    HELLO 0 {version, proof} ──►                          proof = HMAC-SHA256(token, nonce + version);
                                                          constant-time compare; version must be equal
                                  ◄── WELCOME    0 {version, pid}    (or ERROR 0, then close)
    REQUEST n {method, args, stdio} ──►                   (may be sent right after HELLO: no wait)
                                                          plain call ........ ◄── REPLY n {result}
                                                          failed call ....... ◄── ERROR n {type, message,
                                                                                          hint, exit_code}
                                                          pull / push ....... ◄── PROGRESS n {...} ...
                                                                              ◄── REPLY n
    attached run / start / exec / attach:                                     ◄── REPLY n {result:
                                                                                   {container_id}, attached}
    DATA n stdin bytes ──►  ...  EOF n stdin ──►          ◄── DATA n stdout|stderr bytes ...
    RESIZE n {rows, cols} ──►  SIGNAL n {signal} ──►      ◄── EOF n stdout, EOF n stderr
                                                          ◄── EXIT n {exit_code[, ended]} (ends the call)
    logs:                                                 ◄── DATA n stdout|stderr ... ◄── REPLY n
    load / import:   DATA n blob ... EOF n blob ──►       ◄── REPLY n
    build:           DATA n blob ... EOF n blob ──►       ◄── PROGRESS n {...} ... (also during the upload)
    SIGNAL n {signal} ──► cancels it (a cancellable call) ◄── REPLY n (or ERROR n once cancelled)
    save:                                                 ◄── DATA n blob ... EOF n blob ◄── REPLY n

EOF on stdin is the half-close: the container reads end-of-file while its output keeps flowing. SIGNAL
``DETACH`` (no real signal's name) ends an ``attach`` call whose client went away; the container runs on. A call
ends with exactly one REPLY (plain, logs, blob, progress and upload-with-progress calls), ERROR, or EXIT (attached calls, after
their REPLY and their output). Frames for a call that has ended are ignored: the client may still be
sending stdin when the process exits. A frame that is malformed, too large, of a kind the receiver never
accepts, or outside the handshake order ends the connection with a :class:`ProtocolError`.

If the connection drops, the client fails every pending call with a :class:`runner.errors.VMError`; the
agent lets attached containers run on detached, as Docker does when its client dies (output still reaches
the container's log), and cancels the cancellable calls (a build: its running step is killed, nothing is
tagged), as dockerd cancels a build whose client left. A cancellable call is one whose method takes the local
``cancel`` parameter; a host that wants one stopped while its connection stays (the API server whose own
client hung up) sends it a SIGNAL frame.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import json
import os
import re
import struct
import threading
from pathlib import Path
from typing import Any, Callable, Mapping

from runner.errors import RunnerError, VMError
from runner.records import FrozenRecord

HEADER = struct.Struct(">BBII")
MAX_JSON = 16 * 1024 * 1024  # ps/inspect/images of a large store still fit; a rogue length does not
MAX_DATA = 1024 * 1024
CHUNK = 64 * 1024  # what senders put into one DATA frame
MAX_CALL_ID = 2 ** 32 - 1

# frame kinds
CHALLENGE, HELLO, WELCOME, REQUEST, REPLY, ERROR, DATA, EOF, EXIT, SIGNAL, RESIZE, PROGRESS = range(1, 13)
KIND_NAMES = {CHALLENGE: "CHALLENGE", HELLO: "HELLO", WELCOME: "WELCOME", REQUEST: "REQUEST", REPLY: "REPLY",
              ERROR: "ERROR", DATA: "DATA", EOF: "EOF", EXIT: "EXIT", SIGNAL: "SIGNAL", RESIZE: "RESIZE",
              PROGRESS: "PROGRESS"}
_EMPTY_KINDS = {EOF}
_BINARY_KINDS = {DATA}
# Which kinds each side may receive: a peer sending anything else is broken or hostile.
FROM_CLIENT = {HELLO, REQUEST, DATA, EOF, SIGNAL, RESIZE}
FROM_SERVER = {CHALLENGE, WELCOME, REPLY, ERROR, DATA, EOF, EXIT, PROGRESS}

DETACH = "DETACH"  # SIGNAL's pseudo-signal for attach calls

# streams (DATA and EOF frames)
STDIN, STDOUT, STDERR, BLOB = 0, 1, 2, 3
STREAM_NAMES = {STDIN: "stdin", STDOUT: "stdout", STDERR: "stderr", BLOB: "blob"}
_STREAMS_FROM_CLIENT = {STDIN, BLOB}
_STREAMS_FROM_SERVER = {STDOUT, STDERR, BLOB}

NONCE_BYTES = 32
_HEX_RE = re.compile(r"^[0-9a-f]+$")
_VERSION_RE = re.compile(r"^[0-9a-f]{16}$")
_SIGNAL_RE = re.compile(r"^[A-Z][A-Z0-9]{1,9}$")
_AUTH_CONTEXT = b"runner-agent-auth-v1\0"

# What the host ships into the guest, relative to the directory holding the ``runner`` package: the
# stdlib-only part of runner. The protocol version is the hash of exactly these files.
SHIPPED_FILES = ("runner/__init__.py", "runner/diskfull.py", "runner/errors.py", "runner/procs.py", "runner/records.py",
                 "runner/spec.py", "runner/stdio.py")
SHIPPED_TREES = ("runner/engine/", "runner/images/", "runner/agent/")


class ProtocolError(VMError):
    """The peer sent something this protocol does not allow; the connection cannot be trusted any more."""

    def __init__(self, message: str):
        super().__init__(f"agent protocol error: {message}",
                         hint="this is a bug in runner or a corrupted connection; `runner vm stop` and retry")


class VersionMismatch(VMError):
    """Host and agent run different runner code (raised on the host; the agent sends a plain VMError)."""


# ---------------------------------------------------------------------------------------------- framing

class Frame(FrozenRecord):
    __slots__ = ("kind", "call_id", "payload", "stream")
    _fields = __slots__

    def __init__(self, kind: int, call_id: int = 0, payload: bytes = b"", stream: int = 0):
        set_field = object.__setattr__  # one per frame on both ends: no keyword dict, no loop
        set_field(self, "kind", kind)
        set_field(self, "call_id", call_id)
        set_field(self, "payload", payload)
        set_field(self, "stream", stream)

    def json(self) -> dict:
        """The payload as a JSON object; anything else is a :class:`ProtocolError`."""
        try:
            # Decoded here rather than by json.loads, whose guessing among UTF-8/16/32 is Python code that
            # costs ~40 us per frame in the guest under TCG; both ends only ever send UTF-8 (ASCII, in fact).
            value = json.loads(self.payload.decode())
        except (ValueError, RecursionError) as exc:  # incl. UnicodeDecodeError
            raise ProtocolError(f"{KIND_NAMES[self.kind]} frame carries invalid JSON") from exc
        if not isinstance(value, dict):
            raise ProtocolError(f"{KIND_NAMES[self.kind]} frame must carry a JSON object")
        return value


def encode(kind: int, call_id: int = 0, payload: bytes = b"", stream: int = 0) -> bytes:
    """One frame as bytes. Senders chunk DATA to :data:`CHUNK`; over-long payloads are a bug here."""
    limit = MAX_DATA if kind in _BINARY_KINDS else MAX_JSON
    if kind not in KIND_NAMES or len(payload) > limit or not 0 <= call_id <= MAX_CALL_ID:
        raise ValueError(f"cannot encode {KIND_NAMES.get(kind, kind)} frame of {len(payload)} bytes")
    return HEADER.pack(kind, stream, call_id, len(payload)) + payload


# One encoder for every frame: json.dumps with any option builds a new JSONEncoder per call, which costs more
# than the encoding of a small reply itself (measured ~80 us of a ~200 us REPLY in the guest under TCG).
_COMPACT = json.JSONEncoder(separators=(",", ":"))


def encode_object(obj: Any) -> bytes:
    """A JSON payload, compact."""
    return _COMPACT.encode(obj).encode()


def encode_json(kind: int, call_id: int, obj: Any) -> bytes:
    return encode(kind, call_id, _COMPACT.encode(obj).encode())


class Decoder:
    """Incremental frame parser: ``feed`` bytes as they arrive, get complete, header-checked frames back.

    ``accepts`` is the set of kinds this side may receive (:data:`FROM_CLIENT` or :data:`FROM_SERVER`).
    The length is checked before any payload is buffered, so a hostile length cannot make us allocate.
    """

    def __init__(self, accepts: set[int]):
        self.accepts = accepts
        self._streams = _STREAMS_FROM_CLIENT if accepts is FROM_CLIENT else _STREAMS_FROM_SERVER
        self._buf = bytearray()
        self._need: tuple[int, int, int, int] | None = None

    def feed(self, data: bytes) -> list[Frame]:
        buf = self._buf
        buf += data
        frames = []
        pos, end = 0, len(buf)
        try:
            while True:
                if self._need is None:
                    if end - pos < HEADER.size:
                        return frames
                    self._need = self._check_header(*HEADER.unpack_from(buf, pos))
                    pos += HEADER.size
                kind, stream, call_id, length = self._need
                if end - pos < length:
                    return frames
                frames.append(Frame(kind, call_id, bytes(buf[pos:pos + length]), stream))
                pos += length
                self._need = None
        finally:
            del buf[:pos]  # once per feed, not per frame: each del moves what follows

    @property
    def pending(self) -> bool:
        """True while a frame is partly received (a connection closing now was cut mid-frame)."""
        return bool(self._buf) or self._need is not None

    def _check_header(self, kind: int, stream: int, call_id: int, length: int) -> tuple[int, int, int, int]:
        if kind not in self.accepts:
            raise ProtocolError(f"unexpected frame kind {KIND_NAMES.get(kind, kind)}")
        limit = MAX_DATA if kind in _BINARY_KINDS else MAX_JSON
        if length > limit:
            raise ProtocolError(f"{KIND_NAMES[kind]} frame of {length} bytes exceeds the limit of {limit}")
        if kind in _EMPTY_KINDS and length:
            raise ProtocolError(f"{KIND_NAMES[kind]} frame must be empty")
        if kind in (DATA, EOF):
            if stream not in self._streams:
                raise ProtocolError(f"{KIND_NAMES[kind]} frame on stream {stream} not allowed in this direction")
        elif stream:
            raise ProtocolError(f"{KIND_NAMES[kind]} frame must have stream 0")
        if (kind in (CHALLENGE, HELLO, WELCOME)) != (call_id == 0) and kind != ERROR:  # ERROR 0: refused
            raise ProtocolError(f"{KIND_NAMES[kind]} frame with call id {call_id}")
        return kind, stream, call_id, length


# ---------------------------------------------------------------------------------------------- versions

def is_shipped(relpath: str) -> bool:
    """Whether a file (``/``-separated, relative to the directory holding ``runner/``) goes into the guest."""
    if "__pycache__" in relpath.split("/") or not relpath.endswith((".py", ".json")):  # json: engine data
        return False
    return relpath in SHIPPED_FILES or relpath.startswith(SHIPPED_TREES)


def collect_sources(root: Path) -> dict[str, bytes]:
    """The shipped files under ``root`` (``relative/posix/path`` → contents); the same rule on both ends: the
    host hashes and ships them, the agent hashes its own copy to know its version."""
    files: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(root / "runner"):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if is_shipped(rel):
                files[rel] = path.read_bytes()
    return files


def version_of(files: Mapping[str, bytes]) -> str:
    """The protocol version: a hash over the shipped files' names and contents, in a fixed order."""
    h = hashlib.sha256(b"runner-agent-source-v1\0")
    for name in sorted(files):
        data = files[name]
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()[:16]


def auth_proof(token: str, nonce: bytes, version: str) -> str:
    """The HELLO proof. The token itself never crosses the wire (a host-network container could sniff the
    guest's loopback), and the nonce makes a recorded proof useless for a second connection."""
    return hmac.new(token.encode(), _AUTH_CONTEXT + nonce + version.encode(), hashlib.sha256).hexdigest()


def check_token(text: str) -> str:
    """A token read from a file: hex, at least 128 bits. Whitespace around it (a trailing newline) is fine."""
    token = text.strip()
    if len(token) < 32 or not _HEX_RE.match(token):
        raise VMError("the agent token is malformed (expected at least 32 hex digits)")
    return token


def mismatch_error(client_version: str, agent_version: str) -> VersionMismatch:
    return VersionMismatch(
        f"the runner agent in the VM runs code version {agent_version}, but this runner is version "
        f"{client_version}",
        hint="runner restarts the agent with its own code automatically; if this persists, run "
             "`runner vm stop` and retry")


# ---------------------------------------------------------------------------------------------- messages

def _require(cond: bool, what: str) -> None:
    if not cond:
        raise ProtocolError(what)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_hex(value: Any, length: int) -> bool:
    return isinstance(value, str) and len(value) == length and bool(_HEX_RE.match(value))


def parse_challenge(frame: Frame) -> tuple[str, bytes]:
    msg = frame.json()
    _require(isinstance(msg.get("version"), str) and bool(_VERSION_RE.match(msg["version"])),
             "CHALLENGE without a valid version")
    _require(_is_hex(msg.get("nonce"), 2 * NONCE_BYTES), "CHALLENGE without a valid nonce")
    return msg["version"], bytes.fromhex(msg["nonce"])


def parse_hello(frame: Frame) -> tuple[str, str]:
    msg = frame.json()
    version = msg.get("version")
    _require(isinstance(version, str) and len(version) <= 64, "HELLO without a valid version")
    _require(_is_hex(msg.get("proof"), 64), "HELLO without a valid proof")
    return version, msg["proof"]


def parse_welcome(frame: Frame) -> dict:
    msg = frame.json()
    _require(isinstance(msg.get("version"), str) and _is_int(msg.get("pid")), "malformed WELCOME")
    return msg


def parse_error(frame: Frame) -> RunnerError:
    """Rebuild the guest's error exactly (same class, message, hint, exit code), after checking its shape."""
    msg = frame.json()
    _require(isinstance(msg.get("type"), str) and isinstance(msg.get("message"), str), "malformed ERROR")
    _require(msg.get("hint") is None or isinstance(msg["hint"], str), "malformed ERROR hint")
    _require(_is_int(msg.get("exit_code")) and 0 <= msg["exit_code"] <= 255, "malformed ERROR exit code")
    return RunnerError.from_dict(msg)


def parse_exit(frame: Frame) -> int:
    code = frame.json().get("exit_code")
    _require(_is_int(code) and 0 <= code <= 255, "malformed EXIT")
    return code


def parse_ended(frame: Frame) -> str | None:
    """How an attach ended (EXIT's optional ``ended``: exit, detach, eof or lost), None for other calls."""
    ended = frame.json().get("ended")
    _require(ended is None or ended in ("exit", "detach", "eof", "lost"), "malformed EXIT ended")
    return ended


def parse_signal(frame: Frame) -> str:
    name = frame.json().get("signal")
    _require(isinstance(name, str) and bool(_SIGNAL_RE.match(name)), "malformed SIGNAL")
    return name


def parse_resize(frame: Frame) -> tuple[int, int]:
    msg = frame.json()
    rows, cols = msg.get("rows"), msg.get("cols")
    _require(_is_int(rows) and _is_int(cols) and 0 <= rows <= 65535 and 0 <= cols <= 65535, "malformed RESIZE")
    return rows, cols


def parse_reply(frame: Frame) -> tuple[Any, bool]:
    msg = frame.json()
    _require("result" in msg and isinstance(msg.get("attached", False), bool), "malformed REPLY")
    attached = msg.get("attached", False)
    if attached:
        cid = msg["result"].get("container_id") if isinstance(msg["result"], dict) else None
        _require(isinstance(cid, str) and bool(cid), "attached REPLY without a container id")
    return msg["result"], attached


# ---------------------------------------------------------------------------------------------- methods

# How a method moves data besides its JSON arguments and result.
PLAIN, ATTACH, OUTPUT, UPLOAD, DOWNLOAD, PROGRESS_CALL = "plain", "attach", "output", "upload", "download", \
    "progress"
# An upload whose method reports progress meanwhile (build: the context goes up, the steps' output comes back).
UPLOAD_PROGRESS = "upload_progress"
UPLOAD_KINDS = (UPLOAD, UPLOAD_PROGRESS)

def _nullable(*types: type) -> tuple[type, ...]:
    return types + (type(None),)


def _str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _size(value: Any) -> bool:
    return value is None or (isinstance(value, dict) and set(value) == {"rows", "cols"} and all(
        _is_int(value[k]) and 0 <= value[k] <= 65535 for k in ("rows", "cols")))


_HOSTPORT = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?$")


def _credentials(value: Any) -> bool:
    return value is None or (isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()))


class Param(FrozenRecord):
    """One parameter of an engine method, in the order of the Python signature.

    ``local`` parameters never cross the wire as JSON: they are the caller's stdio, stream or progress
    callback, carried by frames (see the diagram). They are listed so that the table is the whole signature,
    from which :mod:`runner.backends.agent` generates the host's methods."""

    __slots__ = ("name", "types", "required", "check", "local")
    _fields = __slots__

    def __init__(self, name: str, types: tuple[type, ...], required: bool = True,
                 check: Callable[[Any], bool] | None = None, local: bool = False):
        self._init(name=name, types=types, required=required, check=check, local=local)


class Method(FrozenRecord):
    """One callable engine method: its parameters, how it moves data (see the diagram), and the JSON type of
    its result (checked on the host: the guest is not trusted)."""

    __slots__ = ("name", "params", "kind", "stdio", "result")
    _fields = __slots__

    def __init__(self, name: str, params: tuple[Param, ...], kind: str = PLAIN, stdio: str = "none",
                 result: type | tuple[type, ...] = object):
        # stdio: "none", "optional" (None = detached), "required"
        self._init(name=name, params=params, kind=kind, stdio=stdio, result=result)

    @property
    def wire_params(self) -> tuple[Param, ...]:
        return tuple(p for p in self.params if not p.local)

    @property
    def cancellable(self) -> bool:
        """Whether the call takes a ``cancel`` (see the diagram): a SIGNAL frame or a dropped connection stops it."""
        return any(p.name == "cancel" for p in self.params)


def _m(name: str, result: type | tuple[type, ...], *params: Param, kind: str = PLAIN, stdio: str = "none"
       ) -> Method:
    return Method(name, params, kind, stdio, result)


_REF = Param("ref", (str,))
# Registry host[:port] -> host[:port] the guest connects to instead (the host's loopback is 10.0.2.2 there).
_ENDPOINTS = Param("endpoints", _nullable(dict), False, lambda v: v is None or (len(v) <= 16 and all(
    isinstance(k, str) and isinstance(t, str) and 0 < len(k) <= 255 and 0 < len(t) <= 255
    and _HOSTPORT.match(k) and _HOSTPORT.match(t) for k, t in v.items())))
_SIZE = Param("size", (dict, type(None)), False, _size)


def _str_map(value: Any) -> bool:
    return value is None or (isinstance(value, dict) and len(value) <= 1024 and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()))


def _filters(value: Any) -> bool:
    """Docker's filters: ``{"key": ["value", ...]}`` (or the older ``{"key": {"value": true}}``)."""
    return value is None or (isinstance(value, dict) and len(value) <= 64 and all(
        isinstance(k, str) and (_str_list(v) or (isinstance(v, dict) and all(isinstance(x, str) for x in v)))
        for k, v in value.items()))


_LABELS = Param("labels", _nullable(dict), False, _str_map)
_FILTERS = Param("filters", _nullable(dict), False, _filters)
# The local parameters (frames, not JSON).
_STDIO = Param("stdio", (), local=True)
_STREAM = Param("stream", (), local=True)
_PROGRESS = Param("progress", (), False, local=True)
_CANCEL = Param("cancel", (), False, local=True)  # a runner.stdio.Cancel: a SIGNAL frame or a drop sets it
_NONE = type(None)

# The one method table: exactly the Backend's engine methods (runner.backends.base.Backend, served by
# runner.engine.engine.Engine), plus ``ping``, the agent's own no-op for liveness and round-trip measurement.
# The agent serves it as a whitelist; the host's AgentBackend is generated from it.
AGENT_ONLY = frozenset({"ping"})
METHODS: dict[str, Method] = {m.name: m for m in (
    _m("ping", _NONE),
    _m("create", str, Param("spec", (dict,))),
    _m("run", str, Param("spec", (dict,)), _STDIO, _SIZE, kind=ATTACH, stdio="optional"),
    _m("start", str, _REF, _STDIO, _SIZE, kind=ATTACH, stdio="optional"),
    _m("exec", str, _REF, Param("exec_spec", (dict,)), _STDIO, _SIZE, kind=ATTACH, stdio="required"),
    _m("attach", str, _REF, _STDIO, _SIZE, Param("detach_keys", _nullable(str), False,
                                                 lambda v: v is None or len(v) <= 64),
       kind=ATTACH, stdio="required"),
    _m("resize", _NONE, _REF, Param("rows", (int,), True, lambda v: 0 <= v <= 65535),
       Param("cols", (int,), True, lambda v: 0 <= v <= 65535)),
    _m("stop", str, _REF, Param("timeout", (int, float), False)),
    _m("kill", str, _REF, Param("signal", (str,), False)),
    _m("rm", str, _REF, Param("force", (bool,), False), Param("volumes", (bool,), False)),
    _m("wait", int, _REF),
    _m("ps", list, Param("all", (bool,), False), _FILTERS),
    _m("inspect", dict, _REF),
    _m("logs", _NONE, _REF, _STDIO, Param("follow", (bool,), False), Param("tail", _nullable(int), False),
       Param("since", _nullable(int, float), False), Param("timestamps", (bool,), False),
       Param("until", _nullable(int, float), False), kind=OUTPUT, stdio="required"),
    _m("images", list),
    _m("image_inspect", dict, _REF),
    _m("pull", dict, _REF, Param("platform", _nullable(str), False),
       Param("credentials", _nullable(dict), False, _credentials), _PROGRESS, _ENDPOINTS, kind=PROGRESS_CALL),
    _m("push", str, _REF, Param("credentials", _nullable(dict), False, _credentials), _PROGRESS, _ENDPOINTS,
       kind=PROGRESS_CALL),
    _m("tag", _NONE, Param("source", (str,)), Param("target", (str,))),
    _m("rmi", list, _REF, Param("force", (bool,), False)),
    _m("load", list, _STREAM, kind=UPLOAD),
    _m("save", _NONE, Param("refs", (list,), True, _str_list), _STREAM, kind=DOWNLOAD),
    _m("import_image", str, _STREAM, Param("name", (str,)), Param("changes", _nullable(list), False,
             lambda v: v is None or _str_list(v)),
       kind=UPLOAD),
    _m("build", str, _STREAM, Param("options", _nullable(dict), False), _PROGRESS, _CANCEL, _ENDPOINTS,
       kind=UPLOAD_PROGRESS),
    _m("build_prune", dict),
    _m("port", dict, _REF),
    _m("network_create", dict, Param("name", (str,)), Param("subnet", _nullable(str), False), _LABELS),
    _m("network_ls", list, _FILTERS),
    _m("network_inspect", dict, Param("name", (str,))),
    _m("network_rm", str, Param("name", (str,))),
    _m("network_connect", str, Param("name", (str,)), _REF,
       Param("aliases", _nullable(list), False, lambda v: v is None or (len(v) <= 64 and _str_list(v)))),
    _m("network_disconnect", str, Param("name", (str,)), _REF, Param("force", (bool,), False)),
    _m("volume_create", dict, Param("name", _nullable(str), False), _LABELS,
       Param("options", _nullable(dict), False, _str_map)),
    _m("volume_ls", list, _FILTERS),
    _m("volume_inspect", dict, Param("name", (str,))),
    _m("volume_rm", str, Param("name", (str,)), Param("force", (bool,), False)),
    _m("volume_prune", dict, Param("all", (bool,), False), _FILTERS),
    _m("restore", list),
    _m("archive_stat", dict, _REF, Param("path", (str,))),
    _m("archive_get", _NONE, _REF, Param("path", (str,)), _STREAM, kind=DOWNLOAD),
    _m("archive_put", dict, _STREAM, _REF, Param("path", (str,)), kind=UPLOAD),
    _m("top", dict, _REF, Param("ps_args", _nullable(str), False)),
    _m("stats", dict, _REF),
    _m("changes", list, _REF),
    _m("rename", str, _REF, Param("new_name", (str,))),
    _m("pause", str, _REF),
    _m("unpause", str, _REF),
    _m("container_prune", dict, Param("labels", _nullable(list), False, lambda v: v is None or _str_list(v)),
       Param("until", _nullable(int, float), False)),
    _m("events", dict, Param("since", (int,), False), Param("until", _nullable(int), False),
       Param("filters", _nullable(dict), False, lambda v: v is None or all(
           isinstance(k, str) and _str_list(x) for k, x in v.items()))),
    _m("image_history", list, _REF),
    _m("image_prune", dict, Param("all", (bool,), False),
       Param("labels", _nullable(list), False, lambda v: v is None or _str_list(v)),
       Param("until", _nullable(int, float), False)),
    _m("system_df", dict),
    _m("system_prune", dict, Param("all", (bool,), False), Param("volumes", (bool,), False)),
    _m("info", dict),
)}


_PARAM_NAMES = {name: frozenset(p.name for p in m.wire_params) for name, m in METHODS.items()}


class Request(FrozenRecord):
    __slots__ = ("method", "args", "stdin", "attached")
    _fields = __slots__

    def __init__(self, method: Method, args: dict, stdin: bool, attached: bool):
        # stdin: attached with a stdin stream; attached: stdio given (for ``optional`` methods: not detached)
        self._init(method=method, args=args, stdin=stdin, attached=attached)


def request_payload(method: str, args: dict, stdio: dict | None) -> dict:
    return {"method": method, "args": args, "stdio": stdio}


def parse_request(frame: Frame) -> Request:
    """Check a REQUEST against the whitelist; every argument's name and JSON type is verified.

    Semantic checks (is the spec valid, does the container exist) stay with the engine, which raises the
    same errors it raises natively. Errors here are :class:`runner.errors.UsageError`-like RunnerErrors sent
    back as the call's ERROR, not connection failures: the frame itself was well-formed.
    """
    msg = frame.json()
    name = msg.get("method")
    method = METHODS.get(name) if isinstance(name, str) else None
    if method is None:
        raise RunnerError(f"the runner agent has no method {str(name)[:64]!r}")
    args = msg.get("args", {})
    if not isinstance(args, dict):
        raise RunnerError(f"{name}: arguments must be an object")
    if args and not args.keys() <= _PARAM_NAMES[name]:
        unknown = sorted(set(args) - _PARAM_NAMES[name])
        raise RunnerError(f"{name}: unknown arguments {', '.join(a[:64] for a in unknown)}")
    for p in method.wire_params:
        if p.name not in args:
            if p.required:
                raise RunnerError(f"{name}: missing argument {p.name!r}")
            continue
        value = args[p.name]
        ok = isinstance(value, p.types) and not (isinstance(value, bool) and bool not in p.types)
        if not ok or (p.check is not None and not p.check(value)):
            raise RunnerError(f"{name}: invalid argument {p.name!r}")
    stdio = msg.get("stdio")
    if stdio is not None and not (isinstance(stdio, dict) and set(stdio) == {"stdin"}
                                  and isinstance(stdio["stdin"], bool)):
        raise RunnerError(f"{name}: invalid stdio")
    if method.stdio == "none" and stdio is not None:
        raise RunnerError(f"{name}: takes no stdio")
    if method.stdio == "required" and stdio is None:
        raise RunnerError(f"{name}: needs stdio")
    if method.kind == OUTPUT and stdio is not None and stdio["stdin"]:
        raise RunnerError(f"{name}: takes no stdin")
    return Request(method, args, bool(stdio and stdio["stdin"]), stdio is not None)


# ---------------------------------------------------------------------------------------------- flow control

class Inbox:
    """A bounded queue between a connection's reader thread and one call's consumer (no I/O of its own).

    Why bounded: a client uploading a 1 GB tar, or stdin for a container that reads slowly, must not pile up
    in memory; when ``limit`` bytes wait, ``put`` blocks the reader, which stops reading the socket, and TCP
    pushes back on the sender. Why closable: once the consumer is done (the engine returned early with an
    error), ``put`` must drop instead of block, or the reader would wait forever on a queue nobody drains.

    ``None`` as an item is end-of-stream. :meth:`fail` marks a lost connection: the consumer sees the end
    at once and ``failed`` tells it the end was not a clean EOF.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.failed = False
        self._items: collections.deque = collections.deque()
        self._bytes = 0
        self._closed = False
        self._cond = threading.Condition()

    def put(self, item: Any, size: int = 0, force: bool = False) -> None:
        with self._cond:
            while self._bytes >= self.limit and not self._closed and not force:
                self._cond.wait()
            if self._closed:
                return
            self._items.append((item, size))
            self._bytes += size
            self._cond.notify_all()

    EMPTY = object()  # what a non-blocking get returns when nothing waits

    def get(self, block: bool = True) -> Any:
        """The next item; None at end-of-stream or once closed; :attr:`EMPTY` if not ``block`` and none waits."""
        with self._cond:
            while block and not self._items and not self._closed:
                self._cond.wait()
            if not self._items:
                return None if self._closed or block else self.EMPTY
            item, size = self._items.popleft()
            self._bytes -= size
            self._cond.notify_all()
            return item

    def close(self) -> None:
        """The consumer is done: drop what waits and whatever comes later."""
        with self._cond:
            self._closed = True
            self._items.clear()
            self._bytes = 0
            self._cond.notify_all()

    def fail(self) -> None:
        self.failed = True
        self.close()
