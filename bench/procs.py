"""Processes the benchmarks start and watch: start, wait, stop; the CPU and memory they spend."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

START_TIMEOUT_SECONDS = 30
STOP_TIMEOUT_SECONDS = 10


class BenchError(RuntimeError):
    """Something the benchmark needs did not work; the message says what and where to look."""



def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads) so far, from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Fields after "(comm)"; comm may contain spaces, hence rpartition. utime, stime are fields 14, 15.
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (resident now), VmHWM (the peak of VmRSS) and RssAnon (private, resident) of a process,
    in KiB, from /proc/PID/status."""
    status = Path(f"/proc/{pid}/status").read_text()
    return {key: int(value.split()[0]) for line in status.splitlines()
            for key, _, value in [line.partition(":")] if key in ("VmRSS", "VmHWM", "RssAnon")}


def reset_peak_rss(pid: int) -> None:
    """Set a process's VmHWM back to its VmRSS, so the next peak read belongs to what runs in between."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError as exc:
        raise BenchError(f"cannot reset the peak RSS of process {pid}: {exc}") from exc



@contextlib.contextmanager
def background(cmd: Sequence[str], log_path: Path, *, cwd: Path | None = None,
               env: Mapping[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """Start a long-lived process with its output in a log file; make sure it is gone on exit.

    It gets a session of its own so that Ctrl-C reaches only us: we then stop
    it in order (proxies before PostgreSQL) instead of everything dying at once.
    """
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
                                env=dict(env) if env is not None else None, start_new_session=True)
    try:
        yield proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes], pid: int | None = None, sig: int = signal.SIGTERM) -> None:
    """Signal `pid` (default: the process itself), wait for `proc` to exit, kill it if it will not."""
    with contextlib.suppress(ProcessLookupError):
        if proc.poll() is None:  # once proc has exited, `pid` may already belong to someone else
            os.kill(pid if pid is not None else proc.pid, sig)
    try:
        proc.wait(timeout=STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        for victim in {proc.pid, pid or proc.pid}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        proc.wait()


def wait_until(ready: Callable[[], bool], proc: subprocess.Popen[bytes], what: str, log_path: Path) -> None:
    """Poll `ready` until true; fail early, with the log's tail, if the process exits first."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{what} exited with {proc.returncode}:\n{_tail(log_path)}")
        if ready():
            return
        time.sleep(0.1)
    raise BenchError(f"{what} not ready after {START_TIMEOUT_SECONDS}s:\n{_tail(log_path)}")


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"({path} not written)"



def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False

