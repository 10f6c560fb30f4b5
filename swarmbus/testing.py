"""Testing helpers: a private ``redis-server`` on a free port, with kill -9 and restart.

For swarmbus's own tests and benchmarks, and for users testing their agents against a
real Redis. Never touches a Redis somebody already runs: every server here is started on
a port nobody else had, in a directory of its own, and stopped by whoever started it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

from .bus.faults import CONNECTION_ERRORS

__all__ = ["REDIS_SERVER", "RedisProcess", "free_port"]

REDIS_SERVER = shutil.which("redis-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisProcess:
    """One redis-server child process; ``aof=True`` turns on append-only persistence."""

    def __init__(self, directory: Path, *, aof: bool = False, port: int | None = None) -> None:
        if REDIS_SERVER is None:
            raise RuntimeError("redis-server is not on PATH (install Redis >= 7.0)")
        self.binary: str = REDIS_SERVER
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.aof = aof
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"<RedisProcess port={self.port} aof={self.aof} dir={self.dir}>"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        return f"unix://{self.dir / 'redis.sock'}?db=0"

    def start(self, timeout: float = 10.0) -> None:
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.dir), "--save", "", "--daemonize", "no",
            "--logfile", str(self.dir / "redis.log"),
            "--unixsocket", str(self.dir / "redis.sock"), "--unixsocketperm", "700",
            "--appendonly", "yes" if self.aof else "no",
            # every write on disk before the reply: a SIGKILL loses nothing acknowledged
            "--appendfsync", "always",
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        try:
            while True:
                try:
                    if client.ping():
                        # AOF replay finished when the server accepts commands
                        return
                except CONNECTION_ERRORS:  # still starting, or loading its AOF
                    if self.proc.poll() is not None:
                        log = (self.dir / "redis.log").read_text(errors="replace")[-2000:]
                        raise RuntimeError(f"redis-server exited: {log}") from None
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
        finally:
            client.close()

    def freeze(self) -> None:
        """SIGSTOP: the server keeps its sockets but answers nothing, like a stalled host."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final fsync, like a crash."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None
