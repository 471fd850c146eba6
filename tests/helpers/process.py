"""The pieces every end-to-end test shares: free ports, a `python -m app ...` child
process with its log file, and a Prometheus exposition parser."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_app(env: dict[str, str], *args: str, timeout: float = 120) -> str:
    """`python -m app ARGS` to completion with exactly `env`; fails the test on a
    non-zero exit (with the end of stderr); returns stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "app", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def children_of(pid: int) -> list[int]:
    """The live child processes of `pid` (Linux /proc)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        found += [int(child) for child in task.read_text().split()]
    return found


def alive(pid: int) -> bool:
    """Running, not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------------------ metrics


def samples(body: str) -> list[tuple[str, str, float]]:
    """Exposition text -> (name, label text without braces, value) per sample line."""
    out = []
    for line in body.splitlines():
        if not line or line.startswith("#"):
            continue
        sample, _, value = line.rpartition(" ")
        name, _, labels = sample.partition("{")
        out.append((name, labels.rstrip("}"), float(value)))
    return out


def sample_value(body: str, name: str, labels: str = "") -> float:
    """One sample (`labels` as exposed: 'code="OK",method="..."'); 0.0 when absent."""
    for found, found_labels, value in samples(body):
        if found == name and found_labels == labels:
            return value
    return 0.0


def sample_sum(body: str, name: str) -> float | None:
    """The sum over every label set of `name`; None when the metric has no sample."""
    values = [value for found, _, value in samples(body) if found == name]
    return sum(values) if values else None


def scrape(port: int, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as reply:
        return str(reply.read().decode())


# ------------------------------------------------------------------------ processes


class ServiceProcess:
    """`python -m app <command>` as a real child process, output in `log_path`."""

    def __init__(self, command: str, env: dict[str, str], log_path: Path):
        self.command = command
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start_process(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app", self.command],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def kill(self) -> None:
        """kill -9: no chance to flush."""
        if self.running():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def terminate(self, timeout: float = 60.0) -> int | None:
        """SIGTERM and wait; a process still running after `timeout` is killed (None)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
                return None
        return self.proc.returncode

    def stop_quietly(self) -> None:
        if self.running():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(timeout=10)
