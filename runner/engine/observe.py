"""A container seen from outside: its processes (``top``), its resource use (``stats``) and the files it
changed (``diff``), in the Engine API's shapes.

Why from the host side: everything needed is visible there without entering the container — its tasks are
the PIDs in its cgroup, their details are in the host's /proc, its counters in the cgroup files, its network
counters in ``/proc/<pid>/net/dev`` (read through PID 1 of the container, so in its network namespace), and
its file changes in the overlay upper dir. Standard library only (runs in the guest too).
"""

from __future__ import annotations

import os
import subprocess
import time

from runner.engine.runtime import cgroups
from runner.errors import UsageError



def _ticks() -> int:
    """Clock ticks per second of /proc's times (looked up when used: os.sysconf is Unix only)."""
    return os.sysconf("SC_CLK_TCK")


def cgroup_path(cid: str) -> str:
    return f"runner/{cid}"  # as runner.engine.bundle.prepare writes cgroupsPath


def pids(cid: str) -> list[int]:
    return sorted(cgroups.Cgroup(cgroup_path(cid)).pids())


# ------------------------------------------------------------------------------------------------ top

def _stat(pid: int) -> list[str]:
    """/proc/<pid>/stat's fields after the command name (field 3 onwards), which may contain spaces."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    return text[text.rindex(")") + 2:].split()


def _uid_name(uid: int, passwd: dict[int, str]) -> str:
    return passwd.get(uid, str(uid))


def _passwd() -> dict[int, str]:
    out = {}
    try:
        with open("/etc/passwd") as f:
            for line in f:
                parts = line.split(":")
                if len(parts) > 2 and parts[2].isdigit():
                    out.setdefault(int(parts[2]), parts[0])
    except OSError:
        pass
    return out


def _ps_ef_row(pid: int, boot: float, now: float, passwd: dict[int, str]) -> list[str]:
    fields = _stat(pid)
    ppid, tty_nr = int(fields[1]), int(fields[4])
    utime, stime, start = int(fields[11]), int(fields[12]), int(fields[19])
    with open(f"/proc/{pid}/status") as f:
        uid = next(int(line.split()[1]) for line in f if line.startswith("Uid:"))
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        cmd = f.read().rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")
    if not cmd:
        with open(f"/proc/{pid}/comm") as f:
            cmd = f"[{f.read().strip()}]"
    started = boot + start / _ticks()
    cpu_secs = (utime + stime) // _ticks()
    pct = int(100 * (utime + stime) / _ticks() / max(now - started, 1e-3))
    stime_text = time.strftime("%H:%M" if now - started < 86400 else "%b%d", time.localtime(started))
    tty = "?" if tty_nr == 0 else f"pts/{os.minor(tty_nr)}"
    return [_uid_name(uid, passwd), str(pid), str(ppid), str(pct), stime_text, tty,
            f"{cpu_secs // 3600:02d}:{cpu_secs // 60 % 60:02d}:{cpu_secs % 60:02d}", cmd]


def _boot_time() -> float:
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("btime "):
                return float(line.split()[1])
    return 0.0


def top(cid: str, ps_args: str | None = None) -> dict:
    """``GET /containers/{id}/top``: ``{"Titles": [...], "Processes": [[...], ...]}`` for the container's tasks.

    Without ``ps_args`` (or with ``-ef``) the rows are made from /proc (the guest has no ``ps``); other
    arguments run the host's ``ps`` and keep the rows whose PID column is one of the container's."""
    wanted = pids(cid)
    if not ps_args or ps_args.strip() == "-ef":
        boot, now, passwd = _boot_time(), time.time(), _passwd()
        rows = []
        for pid in wanted:
            try:
                rows.append(_ps_ef_row(pid, boot, now, passwd))
            except (OSError, StopIteration, ValueError, IndexError):
                continue  # exited meanwhile
        return {"Titles": ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"], "Processes": rows}
    return _run_ps(ps_args, set(wanted))


def _run_ps(ps_args: str, wanted: set[int]) -> dict:
    import shlex
    try:
        args = shlex.split(ps_args)
        proc = subprocess.run(["ps", *args], capture_output=True, text=True, timeout=30)
    except ValueError as exc:
        raise UsageError(f"invalid ps arguments {ps_args!r}: {exc}") from exc
    except FileNotFoundError as exc:
        raise UsageError("ps arguments need the ps program, which is not installed here",
                         hint="leave ps_args out (or use -ef)") from exc
    if proc.returncode != 0:
        raise UsageError(f"ps {ps_args} failed: {proc.stderr.strip() or proc.returncode}")
    lines = proc.stdout.splitlines()
    if not lines:
        return {"Titles": [], "Processes": []}
    titles = lines[0].split()
    if "PID" not in titles:
        raise UsageError(f"ps {ps_args} shows no PID column", hint="e.g. -ef, aux or -o pid,comm")
    col = titles.index("PID")
    rows = []
    for line in lines[1:]:
        parts = line.split(None, len(titles) - 1)
        if len(parts) > col and parts[col].isdigit() and int(parts[col]) in wanted:
            rows.append(parts)
    return {"Titles": titles, "Processes": rows}


# ------------------------------------------------------------------------------------------------ stats

def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
        return None if text == "max" else int(text)
    except (OSError, ValueError):
        return None


def _flat(path: str) -> dict[str, int]:
    try:
        with open(path) as f:
            return cgroups.parse_flat_keyed(f.read())
    except OSError:
        return {}


def _system_usage() -> int:
    """All CPUs' busy+idle time in nanoseconds (Docker's ``system_cpu_usage``, from /proc/stat)."""
    with open("/proc/stat") as f:
        first = f.readline().split()[1:8]
    return sum(int(x) for x in first) * 1_000_000_000 // _ticks()


def _cpu_from_procs(task_pids: list[int]) -> int:
    """CPU time of the live tasks in nanoseconds (v1 hosts whose cpuacct is not runner's hierarchy)."""
    total = 0
    for pid in task_pids:
        try:
            fields = _stat(pid)
            total += int(fields[11]) + int(fields[12])
        except (OSError, ValueError, IndexError):
            continue
    return total * 1_000_000_000 // _ticks()


def _memory(cg: cgroups.Cgroup) -> dict:
    d = cg._dir("memory")
    if d is None:
        return {}
    if cg.layout.version == 2:
        stat = _flat(os.path.join(d, "memory.stat"))
        limit = _read_int(os.path.join(d, "memory.max"))
        return {"usage": _read_int(os.path.join(d, "memory.current")) or 0, "stats": stat,
                "limit": limit if limit is not None else _mem_total()}
    stat = _flat(os.path.join(d, "memory.stat"))
    limit = _read_int(os.path.join(d, "memory.limit_in_bytes")) or 0
    return {"usage": _read_int(os.path.join(d, "memory.usage_in_bytes")) or 0,
            "max_usage": _read_int(os.path.join(d, "memory.max_usage_in_bytes")) or 0, "stats": stat,
            "failcnt": _read_int(os.path.join(d, "memory.failcnt")) or 0,
            "limit": min(limit, _mem_total()) if limit else _mem_total()}


def _mem_total() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def _cpu(cg: cgroups.Cgroup, task_pids: list[int]) -> dict:
    usage = None
    d = cg._dir("cpu")
    if cg.layout.version == 2 and d is not None:
        stat = _flat(os.path.join(d, "cpu.stat"))
        if "usage_usec" in stat:
            usage = {"total_usage": stat["usage_usec"] * 1000, "usage_in_kernelmode": stat.get("system_usec", 0) * 1000,
                     "usage_in_usermode": stat.get("user_usec", 0) * 1000}
    if usage is None:
        total = _cpu_from_procs(task_pids)
        usage = {"total_usage": total, "usage_in_kernelmode": 0, "usage_in_usermode": total}
    ncpu = os.cpu_count() or 1
    return {"cpu_usage": usage, "system_cpu_usage": _system_usage(), "online_cpus": ncpu,
            "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0}}


def _networks(pid: int | None) -> dict:
    """``{"eth0": {"rx_bytes", ...}}`` from /proc/<pid>/net/dev (the container's network namespace)."""
    if not pid:
        return {}
    out = {}
    try:
        with open(f"/proc/{pid}/net/dev") as f:
            lines = f.read().splitlines()[2:]
    except OSError:
        return {}
    for line in lines:
        name, _, rest = line.partition(":")
        name, values = name.strip(), [int(x) for x in rest.split()]
        if name == "lo" or len(values) < 16:
            continue
        out[name] = {"rx_bytes": values[0], "rx_packets": values[1], "rx_errors": values[2],
                     "rx_dropped": values[3], "tx_bytes": values[8], "tx_packets": values[9],
                     "tx_errors": values[10], "tx_dropped": values[11]}
    return out


def stats(rec, now_iso: str) -> dict:
    """One sample of Docker's stats JSON for a container record (zeros when it does not run).

    ``precpu_stats`` is left empty: the caller that streams keeps the previous sample and fills it in, as
    dockerd does, so a one-shot answer carries what a one-shot answer can."""
    cg = cgroups.Cgroup(cgroup_path(rec.id))
    running = rec.status == "running"
    task_pids = sorted(cg.pids()) if running else []
    pids_limit = _read_int(os.path.join(cg._dir("pids") or "/nonexistent", "pids.max"))
    return {
        "read": now_iso, "preread": "0001-01-01T00:00:00Z", "id": rec.id, "name": "/" + rec.name,
        "num_procs": 0,
        "pids_stats": {"current": len(task_pids), **({"limit": pids_limit} if pids_limit else {})},
        "blkio_stats": {"io_service_bytes_recursive": None, "io_serviced_recursive": None,
                        "io_queue_recursive": None, "io_service_time_recursive": None,
                        "io_wait_time_recursive": None, "io_merged_recursive": None,
                        "io_time_recursive": None, "sectors_recursive": None},
        "storage_stats": {},
        "cpu_stats": _cpu(cg, task_pids) if running else {"cpu_usage": {"total_usage": 0}, "throttling_data": {}},
        "precpu_stats": {"cpu_usage": {"total_usage": 0}, "throttling_data": {}},
        "memory_stats": _memory(cg) if running else {},
        "networks": _networks(rec.pid if running else None),
    }


# ------------------------------------------------------------------------------------------------ diff

def changes(upper: str) -> list[dict]:
    """``GET /containers/{id}/changes`` from the overlay upper dir: Kind 0 modified, 1 added, 2 deleted.

    overlayfs marks a deleted file with a 0/0 character device, and a directory that replaced a lower one
    with the ``trusted.overlay.opaque`` xattr; a directory in the upper dir that exists below is a
    modification, as Docker reports the parents of changed files. Whether a path is new is decided against
    the merged lower layers, which the engine passes as ``lowers``."""
    return _walk(upper, "/", [])


def _walk(upper: str, rel: str, out: list[dict]) -> list[dict]:
    try:
        entries = sorted(os.scandir(os.path.join(upper, rel.lstrip("/"))), key=lambda e: e.name)
    except OSError:
        return out
    for entry in entries:
        path = rel.rstrip("/") + "/" + entry.name
        st = entry.stat(follow_symlinks=False)
        if _is_whiteout(st):
            out.append({"Path": path, "Kind": 2})
            continue
        out.append({"Path": path, "Kind": None})  # decided by the caller: added or modified
        if entry.is_dir(follow_symlinks=False):
            _walk(upper, path, out)
    return out


def _is_whiteout(st: os.stat_result) -> bool:
    import stat as stat_mod
    return stat_mod.S_ISCHR(st.st_mode) and st.st_rdev == 0


# Mount points runner makes in every container's upper dir (bind-mounted files): Docker makes its own in an
# "init" layer that diff leaves out, so they are no change of the container's.
HIDDEN = ("/etc/hosts", "/etc/hostname", "/etc/resolv.conf")


def classify(found: list[dict], lowers: list[str]) -> list[dict]:
    """Fill in Kind 0 (exists in a lower layer: modified) or 1 (added) for the entries :func:`changes` left;
    the :data:`HIDDEN` mount points go, and so does a directory that held nothing else that changed."""
    hidden_parents = {p.rsplit("/", 1)[0] for p in HIDDEN}
    found = [item for item in found if item["Path"] not in HIDDEN]
    paths = [item["Path"] for item in found]
    found = [item for item in found if item["Path"] not in hidden_parents
             or any(p.startswith(item["Path"] + "/") for p in paths)]
    out = []
    for item in found:
        if item["Kind"] is None:
            rel = item["Path"].lstrip("/")
            exists = any(os.path.lexists(os.path.join(lower, rel)) for lower in lowers)
            item = {"Path": item["Path"], "Kind": 0 if exists else 1}
        out.append(item)
    return out
