"""Run ``python -m swarmbus`` as a user would: one subprocess per command."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Result:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        return self.stdout.splitlines()

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines]

    def error_line(self) -> str:
        """The single ``swarmbus: error: ...`` line on stderr (no traceback, nothing else)."""
        assert "Traceback" not in self.stderr, str(self)
        lines = self.stderr.splitlines()
        assert len(lines) == 1, str(self)
        assert lines[0].startswith("swarmbus: error: "), str(self)
        return lines[0]

    def __str__(self) -> str:
        return (f"swarmbus {' '.join(self.args)} -> {self.returncode}\n"
                f"stdout: {self.stdout!r}\nstderr: {self.stderr!r}")


class Proc:
    """A long-running CLI process whose output lines are collected by reader threads."""

    def __init__(self, args: tuple[str, ...], env: dict[str, str]) -> None:
        self.args = args
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "swarmbus", *args], cwd=ROOT, env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        )
        self.out: queue.Queue[str] = queue.Queue()
        self.err: queue.Queue[str] = queue.Queue()
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        assert self.popen.stdout is not None and self.popen.stderr is not None
        for stream, q in ((self.popen.stdout, self.out), (self.popen.stderr, self.err)):
            threading.Thread(target=self._pump, args=(stream, q), daemon=True).start()

    @staticmethod
    def _pump(stream: IO[str], q: queue.Queue[str]) -> None:
        for line in stream:
            q.put(line.rstrip("\n"))
        stream.close()

    def _expect(self, q: queue.Queue[str], seen: list[str], needle: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = q.get(timeout=max(left, 0.001))
            except queue.Empty:
                raise AssertionError(
                    f"{needle!r} not seen within {timeout} s from swarmbus {' '.join(self.args)}"
                    f"\nstdout: {self.stdout}\nstderr: {self.stderr}"
                ) from None
            seen.append(line)
            if needle in line:
                return line

    def expect_out(self, needle: str = "", timeout: float = 10.0) -> str:
        """The next stdout line containing ``needle`` (fails after ``timeout``)."""
        return self._expect(self.out, self.stdout, needle, timeout)

    def expect_err(self, needle: str, timeout: float = 10.0) -> str:
        return self._expect(self.err, self.stderr, needle, timeout)

    def drain(self) -> None:
        """Collect what is left once the process ended and its pipes closed."""
        for q, seen in ((self.out, self.stdout), (self.err, self.stderr)):
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                try:
                    seen.append(q.get(timeout=0.05))
                except queue.Empty:
                    if self.popen.poll() is not None:
                        break

    def stop(self, sig: int = signal.SIGINT, timeout: float = 15.0) -> int:
        """Send ``sig``, wait for the exit, collect the remaining output; the exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
        code = self.popen.wait(timeout)
        self.drain()
        return code

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(5)


@dataclass
class CLI:
    """``cli("publish", "PING")`` runs one command; ``cli.spawn(...)`` starts a long one."""

    env: dict[str, str]
    namespace: str
    procs: list[Proc] = field(default_factory=list)

    def __call__(self, *args: str, input: str | None = None, timeout: float = 30.0) -> Result:
        done = subprocess.run(
            [sys.executable, "-m", "swarmbus", *args], cwd=ROOT, env=self.env, input=input,
            capture_output=True, text=True, timeout=timeout,
        )
        return Result(args, done.returncode, done.stdout, done.stderr)

    def ok(self, *args: str, input: str | None = None) -> Result:
        result = self(*args, input=input)
        assert result.returncode == 0, str(result)
        return result

    def spawn(self, *args: str, **env: str) -> Proc:
        """Start a long-running command; ``env`` adds environment variables."""
        proc = Proc(args, {**self.env, **env})
        self.procs.append(proc)
        return proc

    def worker(self, *extra: str, **env: str) -> Proc:
        """``swarmbus run tests.cli.app_agents:risk``, returned once it is consuming."""
        proc = self.spawn("run", "tests.cli.app_agents:risk", *extra, **env)
        proc.expect_err("worker_started", timeout=15)
        return proc


def cli_env(redis_url: str, namespace: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWARMBUS_")}
    env.update(SWARMBUS_REDIS_URL=redis_url, SWARMBUS_NAMESPACE=namespace,
               SWARMBUS_LOG_FORMAT="json", PYTHONUNBUFFERED="1")
    return env


def one_error_line(result: Result) -> str:
    """The single error line on stderr, with nothing on stdout."""
    line = result.error_line()
    assert result.stdout == "", str(result)
    return line


def wait_until(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            assert value, f"condition not met within {timeout} s (last value: {value!r})"
            return value
        time.sleep(0.02)
