"""How results look: aligned tables like docker's, or JSON with --json/--format json."""

from __future__ import annotations

import json
import sys
import time


def print_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=4, sort_keys=False) + "\n")


def table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = ["   ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip() for r in [headers] + rows]
    sys.stdout.write("\n".join(lines) + "\n")


def timestamp(value: float | str | None) -> float | None:
    """Seconds since the epoch from a number or an RFC 3339 string (image configs use nanoseconds)."""
    if value is None or isinstance(value, (int, float)):
        return value
    import datetime
    import re
    text = re.sub(r"(\.\d{6})\d+", r"\1", str(value)).replace("Z", "+00:00")
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def ago(value: float | str | None) -> str:
    """'3 seconds ago', '5 minutes ago' — docker's human durations."""
    ts = timestamp(value)
    if not ts:
        return ""
    return f"{duration(time.time() - ts)} ago"


def _go_time_text(value: float | str | None) -> str:
    """A time as Go's ``time.Time.String()`` in UTC, which docker's formatters print for ``CreatedAt``."""
    ts = timestamp(value)
    if ts is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1e9):09d} +0000 UTC"


def duration(seconds: float) -> str:
    """'3 seconds', '5 minutes': docker's human durations (runner.engine.views, where ps's Status is made)."""
    from runner.engine.views import human_duration
    return human_duration(seconds)


def ports_text(ports: list[dict]) -> str:
    """A container list entry's ``Ports`` as ``docker ps`` shows them: ``127.0.0.1:8080->80/tcp, ...``."""
    return ", ".join(f'{p["IP"]}:{p["PublicPort"]}->{p["PrivatePort"]}/{p["Type"]}' if p.get("PublicPort")
                     else f'{p["PrivatePort"]}/{p["Type"]}' for p in ports)


def containers(items: list[dict], no_trunc: bool) -> None:
    """``docker ps``'s table from container list entries (runner.engine.views.container_summary)."""
    rows = []
    for c in items:
        cmd = c["Command"] if no_trunc or len(c["Command"]) <= 20 else c["Command"][:19] + "…"
        rows.append([c["Id"] if no_trunc else c["Id"][:12], c["Image"], f'"{cmd}"', ago(c["Created"]),
                     c["Status"], ports_text(c.get("Ports") or []), ",".join(n.lstrip("/") for n in c["Names"])])
    table(["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"], rows)


def images(items: list[dict]) -> None:
    """``docker images``'s table: one row per repository:tag (``<none>`` for an untagged image)."""
    rows = []
    for img in items:
        for name in img["RepoTags"] or ["<none>:<none>"]:
            repo, _, tag = name.rpartition(":") if ":" in name.rsplit("/", 1)[-1] else (name, "", "<none>")
            rows.append([repo, tag, img["Id"].split(":")[-1][:12], ago(img.get("Created")),
                         human_size(img.get("Size"))])
    table(["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"], rows)


def networks(items: list[dict], builtin: bool = True) -> None:
    """``network ls``'s table; host and none always exist, so they are listed too (unless filtering)."""
    rows = [[n["Id"][:12], n["Name"], n["Driver"], n["IPAM"]["Config"][0]["Subnet"],
             n["Options"]["com.docker.network.bridge.name"], str(len(n["Containers"]))] for n in items]
    if builtin:
        rows += [["-", "host", "host", "-", "-", "-"], ["-", "none", "null", "-", "-", "-"]]
    table(["NETWORK ID", "NAME", "DRIVER", "SUBNET", "BRIDGE", "CONTAINERS"], rows)


def human_size(n: int | None) -> str:
    """Docker's decimal units; the one formatter is the guest-side one, so errors from the VM read alike."""
    from runner.diskfull import human_size as docker_units
    return docker_units(float(n or 0))


STATS_HEADERS = ["CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "MEM %", "NET I/O", "PIDS"]


def stats_row(sample: dict, previous: dict) -> list[str]:
    """One ``docker stats`` row: CPU % from the change since ``previous`` (or the sample's own precpu_stats),
    memory without the page cache, as the docker CLI computes them."""
    cpu, pre = sample.get("cpu_stats") or {}, (previous.get("cpu_stats") or sample.get("precpu_stats") or {})
    cpu_delta = (cpu.get("cpu_usage") or {}).get("total_usage", 0) - (pre.get("cpu_usage") or {}).get("total_usage", 0)
    sys_delta = cpu.get("system_cpu_usage", 0) - pre.get("system_cpu_usage", 0)
    pct = cpu_delta / sys_delta * (cpu.get("online_cpus") or 1) * 100 if sys_delta > 0 and cpu_delta > 0 else 0.0
    mem = sample.get("memory_stats") or {}
    stat = mem.get("stats") or {}
    used = max(0, mem.get("usage", 0) - stat.get("total_inactive_file", stat.get("inactive_file", 0)))
    limit = mem.get("limit", 0)
    nets = (sample.get("networks") or {}).values()
    rx, tx = sum(n.get("rx_bytes", 0) for n in nets), sum(n.get("tx_bytes", 0) for n in nets)
    return [sample["id"][:12], sample.get("name", "").lstrip("/"), f"{pct:.2f}%",
            f"{human_size(used)} / {human_size(limit)}", f"{(used / limit * 100 if limit else 0):.2f}%",
            f"{human_size(rx)} / {human_size(tx)}", str((sample.get("pids_stats") or {}).get("current", 0))]


def json_line(data) -> str:
    return json.dumps(data, separators=(",", ":"))


def event_line(event: dict) -> str:
    """``docker events``' line: time, type, action, actor id and attributes."""
    from runner.engine.views import iso_time
    attrs = (event.get("Actor") or {}).get("Attributes") or {}
    text = ", ".join(f"{k}={v}" for k, v in sorted(attrs.items()))
    stamp = iso_time(event.get("timeNano", 0) / 1e9)
    return f'{stamp} {event.get("Type")} {event.get("Action")} {(event.get("Actor") or {}).get("ID", "")} ({text})'
# ------------------------------------------------------------------------------------------------ --format rows
# What docker's --format templates see for each list: its own field names (not the API's), as strings.
PS_HEADERS = {"ID": "CONTAINER ID", "Image": "IMAGE", "Command": "COMMAND", "CreatedAt": "CREATED AT",
              "RunningFor": "CREATED", "Status": "STATUS", "Ports": "PORTS", "Names": "NAMES", "Labels": "LABELS",
              "Mounts": "MOUNTS", "Networks": "NETWORKS", "State": "STATE", "Size": "SIZE"}
IMAGE_HEADERS = {"Repository": "REPOSITORY", "Tag": "TAG", "ID": "IMAGE ID", "CreatedSince": "CREATED",
                 "Size": "SIZE", "Digest": "DIGEST", "CreatedAt": "CREATED AT"}
VOLUME_HEADERS = {"Driver": "DRIVER", "Name": "VOLUME NAME", "Mountpoint": "MOUNTPOINT", "Labels": "LABELS",
                  "Scope": "SCOPE"}
NETWORK_HEADERS = {"ID": "NETWORK ID", "Name": "NAME", "Driver": "DRIVER", "Scope": "SCOPE", "Labels": "LABELS"}


def _labels_text(labels: dict | None) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted((labels or {}).items()))


def _label_fn(labels: dict | None):
    return lambda key: (labels or {}).get(key, "")


def ps_row(c: dict, no_trunc: bool = False) -> dict:
    """A container list entry as docker's ``ps --format`` fields."""
    cmd = c["Command"] if no_trunc or len(c["Command"]) <= 20 else c["Command"][:19] + "…"
    return {"ID": c["Id"] if no_trunc else c["Id"][:12], "Image": c["Image"], "Command": f'"{cmd}"',
            "CreatedAt": time.strftime("%Y-%m-%d %H:%M:%S +0000 UTC", time.gmtime(c["Created"])),
            "RunningFor": ago(c["Created"]), "Status": c["Status"], "Ports": ports_text(c.get("Ports") or []),
            "Names": ",".join(n.lstrip("/") for n in c["Names"]), "Labels": _labels_text(c.get("Labels")),
            "Label": _label_fn(c.get("Labels")), "State": c.get("State", ""), "Size": "0B",
            "Mounts": ",".join(m.get("Name") or m.get("Source") or "" for m in c.get("Mounts") or []),
            "Networks": ",".join(((c.get("NetworkSettings") or {}).get("Networks") or {})),
            "LocalVolumes": str(sum(m.get("Type") == "volume" for m in c.get("Mounts") or []))}


def image_rows(img: dict) -> list[dict]:
    out = []
    for name in img["RepoTags"] or ["<none>:<none>"]:
        repo, _, tag = name.rpartition(":") if ":" in name.rsplit("/", 1)[-1] else (name, "", "<none>")
        digest = (img.get("RepoDigests") or ["@<none>"])[0].rpartition("@")[2]
        out.append({"Repository": repo, "Tag": tag, "ID": img["Id"].split(":")[-1][:12], "Digest": digest,
                    "CreatedSince": ago(img.get("Created")), "Size": human_size(img.get("Size")),
                    "CreatedAt": time.strftime("%Y-%m-%d %H:%M:%S +0000 UTC", time.gmtime(img.get("Created") or 0)),
                    "Labels": _labels_text(img.get("Labels")), "Label": _label_fn(img.get("Labels")),
                    "VirtualSize": human_size(img.get("Size")), "Containers": "N/A", "SharedSize": "N/A",
                    "UniqueSize": "N/A"})
    return out


def volume_row(v: dict) -> dict:
    return {"Driver": v["Driver"], "Name": v["Name"], "Mountpoint": v["Mountpoint"], "Scope": v["Scope"],
            "Labels": _labels_text(v.get("Labels")), "Label": _label_fn(v.get("Labels")),
            **dict.fromkeys(("Availability", "Group", "Links", "Size", "Status"), "N/A")}  # cluster/size fields


def network_row(n: dict) -> dict:
    return {"ID": n["Id"][:12], "Name": n["Name"], "Driver": n["Driver"], "Scope": n.get("Scope", "local"),
            "Labels": _labels_text(n.get("Labels")), "Label": _label_fn(n.get("Labels")),
            "IPv6": str(bool(n.get("EnableIPv6"))).lower(), "Internal": str(bool(n.get("Internal"))).lower(),
            "CreatedAt": _go_time_text(n.get("Created"))}


def formatted(fmt: str, rows: list[dict], headers: dict) -> None:
    """Print ``rows`` through a docker ``--format`` (a Go template, ``table ...``; runner.cli.gotemplate)."""
    from runner.cli import gotemplate
    lines = gotemplate.format_rows(fmt, [{k: v for k, v in r.items()} for r in rows], headers)
    if lines:
        sys.stdout.write("\n".join(lines) + "\n")
