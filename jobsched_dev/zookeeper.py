"""Local ZooKeeper servers for development and tests: scripts/zookeeper.sh started and
probed from Python, a 3-member ensemble on loopback for the dev cluster, and what a
running server grants (the session timeout, its tick) for tests whose bounds depend on it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from jobsched_dev import SOURCE_ROOT
from jobsched_dev.processes import port_is_free

ZOOKEEPER_SCRIPT_ENV = "JOBSCHED_ZOOKEEPER_SCRIPT"


class ZooKeeperError(RuntimeError):
    """A local ZooKeeper could not be started or asked."""


def zookeeper_script() -> Path:
    """scripts/zookeeper.sh of this checkout (or the file JOBSCHED_ZOOKEEPER_SCRIPT names)."""
    given = os.environ.get(ZOOKEEPER_SCRIPT_ENV)
    script = Path(given) if given else SOURCE_ROOT / "scripts" / "zookeeper.sh"
    if not script.is_file():
        raise ZooKeeperError(f"{script} not found: set {ZOOKEEPER_SCRIPT_ENV}")
    return script


def _first(hosts: str) -> tuple[str, int]:
    host, _, port = hosts.split(",")[0].rpartition(":")
    return host or "127.0.0.1", int(port)


def four_letter_word(host: str, port: int, word: str, timeout: float = 1.0) -> str | None:
    """The server's answer to a four-letter word (``srvr``, ``conf``, ...), or None if it
    does not answer. A word the server's ``4lw.commands.whitelist`` leaves out is answered
    with a refusal sentence, not refused."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(word.encode())
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
    except OSError:
        return None
    return answer.decode(errors="replace")


def _fields(answer: str | None, separator: str) -> dict[str, str]:
    pairs = (line.split(separator, 1) for line in (answer or "").splitlines())
    return {p[0].strip(): p[1].strip() for p in pairs if len(p) == 2}


def zookeeper_mode(port: int, timeout: float = 1.0) -> str | None:
    """The member's mode (leader, follower, standalone) if it serves clients, else None."""
    return _fields(four_letter_word("127.0.0.1", port, "srvr", timeout), ":").get("Mode")


def zookeeper_answers(hosts: str) -> bool:
    """Whether the first of ``hosts`` serves clients."""
    host, port = _first(hosts)
    return "Mode" in _fields(four_letter_word(host, port, "srvr"), ":")


def ensure_zookeeper(hosts: str) -> None:
    """Start this checkout's single-node ZooKeeper on the first of ``hosts``' ports when
    nothing answers there."""
    if zookeeper_answers(hosts):
        return
    _, port = _first(hosts)
    subprocess.run([str(zookeeper_script()), "start", "--port", str(port)], check=True)


async def granted_session_timeout(hosts: str, requested_s: float) -> float:
    """The session timeout the server grants a client that asks for ``requested_s``, as
    it answered aiozk's connect request: servers clamp every request to their
    [minSessionTimeout, maxSessionTimeout] (by default 2 and 20 ticks), so a server with
    ZooKeeper's stock 2 s tick grants 4 s for 3 s. A role asking for the same timeout is
    granted the same."""
    import aiozk  # the runtime's ZooKeeper client; imported here: only tests ask this

    client = aiozk.ZKClient(hosts, session_timeout=requested_s)
    await asyncio.wait_for(client.start(), timeout=10)
    try:
        granted = client.session.timeout  # aiozk stores the negotiated value here
    finally:
        await client.close()
    if not isinstance(granted, int | float) or granted <= 0:
        raise ZooKeeperError(f"aiozk did not report a negotiated timeout ({granted!r})")
    return float(granted)


def tick_s(hosts: str) -> float | None:
    """The server's ``tickTime`` in seconds from ``conf``, or None where the server's
    four-letter-word whitelist leaves ``conf`` out (the stock whitelist has only ``srvr``)."""
    host, port = _first(hosts)
    tick = _fields(four_letter_word(host, port, "conf"), "=").get("tickTime")
    return int(tick) / 1000 if tick and tick.isdigit() else None


# --- a 3-member ensemble ----------------------------------------------------------------


def zookeeper_ports(base: int) -> list[int]:
    """Every port an ensemble at ``base`` uses: client, peer and election ports, as
    scripts/zookeeper.sh lays them out (peer/election ports shifted by base - 2181)."""
    shift = base - 2181
    return [p + i for p in (base, 2888 + shift, 3888 + shift) for i in range(3)]


def free_zookeeper_base(low: int = 20_000, high: int = 28_000) -> int:
    """A base port whose nine ensemble ports are all free (for tests: never the 2181 one)."""
    for base in range(low + os.getpid() % 997 * 7, high, 7):
        if all(port_is_free(p) for p in zookeeper_ports(base)):
            return base
    raise ZooKeeperError("no free ports for a ZooKeeper ensemble")


@dataclass
class ZooKeeperEnsemble:
    """Three members on 127.0.0.1 run by scripts/zookeeper.sh; data kept under ``directory``
    (keep it: the leader's fencing epoch is the sequence number of its election znode, which
    a fresh ensemble restarts from zero)."""

    base_port: int
    directory: Path
    # Half-second ticks: a dead holder's session ends at most 0.5 s after its timeout
    # (1 s ticks made kill -9 take-overs take up to timeout + 1.1 s).
    tick_ms: int = 500
    script: Path = field(default_factory=zookeeper_script)

    @property
    def ports(self) -> list[int]:
        return [self.base_port + i for i in range(3)]

    @property
    def hosts(self) -> str:
        return ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def command(self, action: str) -> list[str]:
        return [str(self.script), action, "--ensemble", "--port", str(self.base_port),
                "--dir", str(self.directory), "--tick-ms", str(self.tick_ms)]

    def _run(self, action: str, timeout: float = 90) -> str:
        result = subprocess.run(self.command(action), capture_output=True, text=True,
                                timeout=timeout, check=False)
        if result.returncode != 0 and action != "status":
            raise ZooKeeperError(f"zookeeper.sh {action} failed:\n{result.stdout}"
                                 f"{result.stderr}")
        return result.stdout

    def check_ports(self) -> None:
        if any(zookeeper_mode(p) for p in self.ports):
            return  # our own ensemble, still running: start() leaves it alone
        busy = [p for p in zookeeper_ports(self.base_port) if not port_is_free(p)]
        if busy:
            raise ZooKeeperError(f"ZooKeeper ports in use: {busy} (choose another "
                                 "--zookeeper-port)")

    def start(self) -> None:
        """Start the members that are not serving and wait until all three serve (the
        script's start is idempotent: this also brings back killed members)."""
        self._run("start")

    def stop(self) -> None:
        self._run("stop")

    def pid(self, member: int) -> int | None:
        """The JVM pid of member 1, 2 or 3, if it is alive."""
        try:
            pid = int((self.directory / f"zk{member}" / "zookeeper.pid").read_text())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    def kill(self, member: int, sig: int = signal.SIGKILL) -> None:
        pid = self.pid(member)
        if pid is not None:
            os.kill(pid, sig)
            if sig == signal.SIGKILL:
                _wait_gone(pid)

    def mode(self, member: int) -> str | None:
        return zookeeper_mode(self.ports[member - 1])

    def leader(self) -> int | None:
        """Which member (1-3) leads the ensemble now."""
        for member in (1, 2, 3):
            if self.mode(member) == "leader":
                return member
        return None


def _wait_gone(pid: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            return
        try:
            with open(f"/proc/{pid}/stat", "rb") as stat:  # a zombie counts as gone
                if stat.read().split(b") ", 1)[-1][:1] == b"Z":
                    return
        except OSError:
            return
        time.sleep(0.02)
