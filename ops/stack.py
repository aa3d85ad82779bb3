"""The real stack on one machine: the provider sandbox, gunicorn, named Celery workers and beat, each its own
process, on PostgreSQL and Redis.

    with Stack("postgres://postgres@127.0.0.1:5432/backoffice_stack", "redis://127.0.0.1:6379/6") as stack:
        httpx.get(f"{stack.web_url}/api/health")
        stack.kill("worker1")   # SIGKILL, as a machine dying would
        stack.start("worker1")  # and back, waited for until it answers

On enter: `migrate` and `collectstatic`, then the processes in order (sandbox, web, worker1..N, beat), each
waited for until it is ready (bounded): the sandbox and the web answer their health URLs, a worker answers a
Celery ping by its name (`worker1@<host>`), beat has logged that it started. Every process runs in its own
session (process group), so Ctrl-C at a terminal reaches only this one and `stop()` decides the order. Each
writes its output to `<log_dir>/<name>.log` (default var/stack/). `stop()` (and leaving the `with`) ends
every process it started, by pid: SIGTERM, then SIGKILL to what is left after a bounded wait.

The sandbox (`manage.py sandbox`) delivers its webhooks to the web process; the web, workers and beat reach
the sandbox at SANDBOX_URL. Ports not given are picked free by binding port 0 on 127.0.0.1.

`python -m ops.stack` (`make stack`) runs it in the foreground until Ctrl-C: see `main`.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import closing, suppress
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import urlsplit

import httpx

ROOT = Path(__file__).resolve().parent.parent
READY_SECONDS = 120.0  # per process: two shared cores start Django and Celery slowly
SETUP_SECONDS = 600.0  # migrate and collectstatic, each
STOP_SECONDS = 20.0  # SIGTERM, then SIGKILL
POLL_SECONDS = 0.5
WORKER_CONCURRENCY = 2
WEB_WORKERS = 2
# gthread: a worker serves WEB_THREADS requests at once and keeps HTTP/1.1 connections alive, so the waits of one
# request (PostgreSQL, Redis, the sandbox) overlap with the work of another; the sync worker serves one request
# and closes the connection after it (bench/webhooks.py: README, Chaos and load).
WEB_THREADS = 8
BEAT_READY_TEXT = b"beat: Starting"


class StackError(RuntimeError):
    """A process did not start, or a setup step failed; the message names it and quotes its log."""


class StackCheckFailed(StackError):
    """A check run against the stack (ops.stack_smoke, suites built on Stack) found something wrong."""


def free_port() -> int:
    """A port nobody listens on at this moment, from the kernel (port 0 on 127.0.0.1)."""
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def database_create(database_url: str, *, drop: bool = False) -> bool:
    """Create the PostgreSQL database the URL names if it does not exist (after dropping it, with `drop`).
    True when it was created now."""
    import psycopg
    from psycopg import sql

    parts = urlsplit(database_url)
    name = parts.path.lstrip("/")
    if parts.scheme not in ("postgres", "postgresql", "pgsql") or not name:
        raise StackError(f"not a PostgreSQL database URL: {database_url}")
    server = parts._replace(path="/postgres").geturl()
    with psycopg.connect(server, autocommit=True, connect_timeout=10) as connection:
        if drop:
            connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        if connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            return False
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return True


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


class Stack:
    def __init__(
        self,
        database_url: str,
        redis_url: str,
        workers: int = 2,
        web_port: int | None = None,
        sandbox_port: int | None = None,
        env: dict[str, str] | None = None,
        log_dir: Path | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError("a stack needs at least one worker")
        self.database_url, self.redis_url = database_url, redis_url
        self.web_port, self.sandbox_port = web_port or free_port(), sandbox_port or free_port()
        self.web_url = f"http://127.0.0.1:{self.web_port}"
        self.sandbox_url = f"http://127.0.0.1:{self.sandbox_port}"
        self.log_dir = log_dir or ROOT / "var" / "stack"
        self.worker_names = [f"worker{n}" for n in range(1, workers + 1)]
        self.env = self._environment(env or {})
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._log_offsets: dict[str, int] = {}  # where each process's latest start begins in its log
        self._celery: Any = None

    # --- environment and commands

    def _environment(self, extra: dict[str, str]) -> dict[str, str]:
        env = {
            **os.environ,
            # The real settings, whoever starts it (a test run's DJANGO_SETTINGS_MODULE runs tasks eagerly in the
            # process that queues them: beat and web would do the workers' work).
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "PROVIDER_MODE": "sandbox",
            "SANDBOX_URL": self.sandbox_url,
            "SANDBOX_WEBHOOK_BASE_URL": self.web_url,
            "BACKOFFICE_URL": self.web_url,
            "PYTHONUNBUFFERED": "1",
        }
        if not env.get("SECRET_KEY"):
            env["SECRET_KEY"] = secrets.token_urlsafe(50)  # every process of the stack shares it
        env.update(extra)
        return env

    def commands(self) -> dict[str, list[str]]:
        """Each process's command line, in start order (the same as the Procfile's, on this stack's ports)."""
        python = sys.executable
        celery = [python, "-m", "celery", "-A", "config"]
        commands = {
            "sandbox": [python, "manage.py", "sandbox", "--host", "127.0.0.1", "--port", str(self.sandbox_port),
                        "--webhook-base-url", self.web_url],
            "web": [python, "-m", "gunicorn", "config.wsgi", "--bind", f"127.0.0.1:{self.web_port}",
                    "--workers", str(WEB_WORKERS), "--worker-class", "gthread", "--threads", str(WEB_THREADS),
                    "--access-logfile", "-"],
        }  # fmt: skip
        for name in self.worker_names:
            commands[name] = [*celery, "worker", "-n", f"{name}@%h", "--loglevel", "info",
                              "--concurrency", str(WORKER_CONCURRENCY)]  # fmt: skip
        commands["beat"] = [*celery, "beat", "--loglevel", "info",
                            "--scheduler", "django_celery_beat.schedulers:DatabaseScheduler"]  # fmt: skip
        return commands

    def manage(self, *args: str, timeout: float = SETUP_SECONDS) -> subprocess.CompletedProcess[str]:
        """Run `manage.py <args>` with the stack's environment; StackError (with its output) if it fails."""
        command = [sys.executable, "manage.py", *args]
        try:
            done = subprocess.run(  # noqa: S603 - our own interpreter and manage.py
                command, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as error:
            raise StackError(f"manage.py {' '.join(args)} did not finish within {timeout:.0f} s") from error
        if done.returncode != 0:
            raise StackError(f"manage.py {' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
        return done

    # --- lifecycle

    def __enter__(self) -> Stack:
        try:
            self.setup()
            for name in self.commands():
                self.start(name)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

    def setup(self) -> None:
        """Migrate and collect static files (what a deploy does before starting the processes)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for name in self.commands():
            self.log_path(name).write_bytes(b"")  # each run's logs start empty; restarts append
        self.manage("migrate", "--noinput")
        self.manage("collectstatic", "--noinput")

    def start(self, name: str, timeout: float = READY_SECONDS) -> subprocess.Popen[bytes]:
        """Start one process (again, after `kill`) and wait until it is ready."""
        command = self.commands().get(name)
        if command is None:
            raise KeyError(f"no process {name!r} in this stack; there are {list(self.commands())}")
        if self.running(name):
            raise StackError(f"{name} is running already (pid {self.processes[name].pid})")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path(name), "ab") as log:
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(command)}\n".encode())
            log.flush()
            self._log_offsets[name] = log.tell()
            process = subprocess.Popen(  # noqa: S603 - the commands above, our own interpreter
                command, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.processes[name] = process
        self._wait_ready(name, process, timeout)
        return process

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to one process; SIGKILL goes to its whole process group (its pool or gunicorn's workers
        die with it, as on a machine that lost power) and is waited for. Other signals reach the main process
        only, which handles its children as it does in production."""
        process = self.processes[name]
        if process.poll() is not None:
            return
        if sig == signal.SIGKILL:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=STOP_SECONDS)
        else:
            process.send_signal(sig)

    def running(self, name: str) -> bool:
        process = self.processes.get(name)
        return process is not None and process.poll() is None

    def stop(self, timeout: float = STOP_SECONDS) -> None:
        """End every process this stack started, newest first: SIGTERM, then SIGKILL after `timeout`."""
        started = [(name, p) for name, p in reversed(list(self.processes.items())) if p.poll() is None]
        for _, process in started:
            with suppress(ProcessLookupError):
                process.terminate()
        deadline = time.monotonic() + timeout
        for _, process in started:
            with suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
        for _, process in started:
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)  # what is left of it and its children
            with suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
        if self._celery is not None:
            self._celery.close()
            self._celery = None

    # --- readiness

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def log_tail(self, name: str, lines: int = 30) -> str:
        try:
            text = self.log_path(name).read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def node_name(self, worker: str) -> str:
        """The Celery node name of a worker, as `-n worker1@%h` expands it."""
        return f"{worker}@{socket.gethostname()}"

    def _ready_check(self, name: str) -> Callable[[], bool]:
        if name == "sandbox":
            return lambda: _answers(f"{self.sandbox_url}/_control/health")
        if name == "web":
            return lambda: _answers(f"{self.web_url}/api/health/database")
        if name == "beat":
            offset = self._log_offsets.get(name, 0)  # this start's lines only
            return lambda: BEAT_READY_TEXT in self.log_path(name).read_bytes()[offset:]
        return lambda: self._pings(self.node_name(name))

    def _pings(self, node: str) -> bool:
        if self._celery is None:
            from celery import Celery

            self._celery = Celery("ops-stack", broker=self.redis_url)
        try:
            return bool(self._celery.control.ping(destination=[node], timeout=1.0))
        except Exception:  # the broker not answering yet is "not ready", whatever kombu raises
            return False

    def _wait_ready(self, name: str, process: subprocess.Popen[bytes], timeout: float) -> None:
        check = self._ready_check(name)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise StackError(f"{name} exited {process.returncode} while starting:\n{self.log_tail(name)}")
            if check():
                return
            time.sleep(POLL_SECONDS)
        raise StackError(f"{name} was not ready within {timeout:.0f} s:\n{self.log_tail(name)}")


# --- `python -m ops.stack` (`make stack`) -------------------------------------------------------------------

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/backoffice_stack"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/6"


def _raise_interrupt(signum: int, frame: Any) -> None:
    """The first Ctrl-C (or SIGTERM) stops the stack; more of them do not cut the bounded stop short."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt


def _print_sign_in(stack: Stack, out: IO[str]) -> None:
    admin = stack.manage("ensure_superuser").stdout.strip()
    out.write(
        f"\nThe stack is up (logs in {stack.log_dir}/):\n"
        f"  admin       {stack.web_url}/admin/\n"
        f"  API docs    {stack.web_url}/api/docs/\n"
        f"  health      {stack.web_url}/api/health\n"
        f"  sandbox     {stack.sandbox_url}/_control/health (webhooks to {stack.web_url}/webhooks/<provider>/)\n"
        f"  processes   " + ", ".join(f"{name} (pid {p.pid})" for name, p in stack.processes.items()) + "\n"
        f"\nSign in: {admin}\n\nCtrl-C stops everything.\n"
    )
    out.flush()


def _watch(stack: Stack, out: IO[str]) -> None:
    """Until Ctrl-C (or SIGTERM): say once when a process exits by itself."""
    reported: set[str] = set()
    while True:
        for name, process in stack.processes.items():
            if process.poll() is not None and name not in reported:
                reported.add(name)
                out.write(f"{name} exited {process.returncode}; see {stack.log_path(name)}\n")
                out.flush()
        time.sleep(1.0)


def main() -> int:
    import environ

    environ.Env.read_env(ROOT / ".env", overwrite=False)  # as the settings read it: the environment wins
    database_url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    redis_url = os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
    web_port = int(os.environ.get("WEB_PORT") or 8000)
    sandbox_port = int(os.environ.get("SANDBOX_PORT") or 8765)
    workers = int(os.environ.get("STACK_WORKERS") or 2)
    out = sys.stdout
    for sig in (signal.SIGINT, signal.SIGTERM):  # SIGINT too: a shell may have started us with it ignored
        signal.signal(sig, _raise_interrupt)
    try:
        if database_create(database_url):
            out.write(f"created database {urlsplit(database_url).path.lstrip('/')}\n")
        out.write(f"starting the stack on {database_url} and {redis_url} (migrate, collectstatic, processes)\n")
        out.flush()
        with Stack(database_url, redis_url, workers=workers, web_port=web_port, sandbox_port=sandbox_port) as stack:
            _print_sign_in(stack, out)
            _watch(stack, out)
    except KeyboardInterrupt:
        out.write("\nstopped every process of the stack\n")
    except (StackError, OSError) as error:
        sys.stderr.write(f"stack: {error}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
