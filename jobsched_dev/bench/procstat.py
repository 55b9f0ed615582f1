"""CPU seconds and memory of processes, read from /proc (Linux), without extra packages.

A scenario snapshots the processes it cares about before and after its measured window;
the difference is what the window cost. PostgreSQL forks a backend per connection and
reaps it on disconnect, so its total also counts the postmaster's reaped children.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True, slots=True)
class ProcTimes:
    cpu_s: float  # user + system of the process itself
    children_cpu_s: float  # of its children it has reaped
    rss_mb: float


def read_times(pid: int) -> ProcTimes | None:
    """The process's CPU and RSS now; None once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
        statm = Path(f"/proc/{pid}/statm").read_text().split()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw[raw.rindex(")") + 2:].split()  # the command name may hold spaces
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return ProcTimes((utime + stime) / TICK, (cutime + cstime) / TICK,
                     int(statm[1]) * PAGE / 2**20)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        return ""


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def service_pids() -> dict[str, list[int]]:
    """The local PostgreSQL, RabbitMQ and ZooKeeper server processes, by service."""
    found: dict[str, list[int]] = {"postgresql": [], "rabbitmq": [], "zookeeper": []}
    for pid in _pids():
        comm = _comm(pid)
        if comm.startswith("postgres"):
            found["postgresql"].append(pid)
        elif comm == "beam.smp" and "rabbit" in _cmdline(pid):
            found["rabbitmq"].append(pid)
        elif comm == "java" and "zookeeper" in _cmdline(pid).lower():
            found["zookeeper"].append(pid)
    return found


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values[:8])
    return (total - idle) / TICK, total / TICK


class CpuMeter:
    """CPU seconds spent in a window by named processes and by the local services.

    ``start()`` and ``stop()`` bracket the window; ``add()`` names a process (a role
    started by the benchmark) whose whole life falls in or overlaps the window.
    """

    def __init__(self) -> None:
        self._named: dict[str, int] = {}
        self._before: dict[int, ProcTimes] = {}
        self._after: dict[int, ProcTimes] = {}
        self._services_before: dict[str, dict[int, ProcTimes]] = {}
        self._services_after: dict[str, dict[int, ProcTimes]] = {}
        self._machine_before = (0.0, 0.0)
        self._machine_after = (0.0, 0.0)
        self._self_before = 0.0
        self._self_after = 0.0

    def add(self, name: str, pid: int) -> None:
        self._named[name] = pid
        if self._machine_before[1]:
            times = read_times(pid)
            if times is not None:
                self._before[pid] = times

    def start(self) -> None:
        self._before = {pid: t for pid in self._named.values() if (t := read_times(pid))}
        self._services_before = _snapshot_services()
        self._machine_before = machine_busy()
        self._self_before = _self_cpu()

    def stop(self) -> None:
        self._after = {pid: t for pid in self._named.values() if (t := read_times(pid))}
        self._services_after = _snapshot_services()
        self._machine_after = machine_busy()
        self._self_after = _self_cpu()

    def report(self) -> dict[str, dict[str, float]]:
        """Per process: CPU seconds in the window, share of one core, RSS at the end (MB)."""
        wall = max(1e-9, (self._machine_after[1] - self._machine_before[1]) / (os.cpu_count()
                                                                             or 1))
        out: dict[str, dict[str, float]] = {}
        for name, pid in self._named.items():
            after = self._after.get(pid)
            if after is None:
                continue
            before = self._before.get(pid)
            cpu = after.cpu_s - (before.cpu_s if before else 0.0)
            out[name] = {"cpu_s": cpu, "core_share": cpu / wall, "rss_mb": after.rss_mb}
        for service, before_map in self._services_before.items():
            after_map = self._services_after.get(service, {})
            cpu = 0.0
            for pid, after in after_map.items():
                before = before_map.get(pid)
                cpu += after.cpu_s - (before.cpu_s if before else 0.0)
                cpu += after.children_cpu_s - (before.children_cpu_s if before else 0.0)
            rss = sum(t.rss_mb for t in after_map.values())
            out[service] = {"cpu_s": cpu, "core_share": cpu / wall, "rss_mb": rss}
        bench = self._self_after - self._self_before
        out["bench client"] = {"cpu_s": bench, "core_share": bench / wall,
                               "rss_mb": (read_times(os.getpid()) or ProcTimes(0, 0, 0)).rss_mb}
        busy = self._machine_after[0] - self._machine_before[0]
        total = self._machine_after[1] - self._machine_before[1]
        out["machine (all processes)"] = {"cpu_s": busy, "core_share": busy / wall,
                                          "rss_mb": 0.0, "busy_fraction": busy / max(total, 1e-9)}
        return out


def _snapshot_services() -> dict[str, dict[int, ProcTimes]]:
    return {service: {pid: t for pid in pids if (t := read_times(pid))}
            for service, pids in service_pids().items()}


def _self_cpu() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system
