"""Shared machinery for the chat-relay benchmarks: a whole BYOK stack in a temp dir, users,
keys and conversations, sign-in, sending a message and reading its SSE stream over HTTP.

A benchmark drives the system only from the outside: HTTP (sign in, POST a message, GET the
turn's event stream) plus ORM/service calls for setup. It never imports chat internals, so it
keeps working while the relay inside changes.

    with Stack("ttft", worker_concurrency=128) as stack:
        user = stack.create_user("a@bench.test")
        key = stack.create_key(user)
        conversation_ids = stack.create_conversations(user, key, 10)
        cookies = stack.login(user.email)
        ...

Every subprocess is started with its own session and a parent-death signal, and is stopped
(SIGTERM, then SIGKILL) when the `with` block ends, however it ends: normally, on an error,
on Ctrl-C or on SIGTERM. Everything listens on 127.0.0.1 or on a Unix socket in the temp dir.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import math
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PYTHON = sys.executable
RESULTS_DIR = ROOT / "bench" / "results"
HOST = "127.0.0.1"
PASSWORD = "bench horse battery staple 42"  # noqa: S105 - throwaway users in a temp DB
MODEL = "fake-gpt-large"
CLK_TCK = os.sysconf("SC_CLK_TCK")
STREAM_URL = re.compile(r'data-stream-url="(/chat/m/[0-9a-f-]{36}/stream/)"')
CSRF_FIELD = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')
# time.time() - time.monotonic(): turns the app's wall-clock timestamps (Message.created_at,
# started_at) into the monotonic clock every process on the machine shares.
WALL_OFFSET = time.time() - time.monotonic()


# --- options, output -------------------------------------------------------------------------


def parse_args(description: str) -> argparse.Namespace:
    """`--quick` (or BENCH_QUICK=1) shrinks every size for a fast smoke run."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick",
        action="store_true",
        default=os.environ.get("BENCH_QUICK", "") not in ("", "0"),
        help="small sizes, for a smoke run (also BENCH_QUICK=1)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temp dir (logs, database) at the end"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override one size (integer), e.g. --set concurrency=40; repeatable",
    )
    return parser.parse_args()


def apply_overrides(sizes: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Sizes with `--set name=value` applied (values parsed as int, float or a list of ints)."""
    for item in args.set:
        name, _, value = item.partition("=")
        if name not in sizes:
            raise SystemExit(f"--set {name}: unknown size; known: {', '.join(sorted(sizes))}")
        if "," in value or isinstance(sizes[name], list):
            sizes[name] = [int(v) for v in value.split(",") if v]
        else:
            sizes[name] = float(value) if "." in value else int(value)
    return sizes


def _psql(sql: str) -> None:
    subprocess.run(
        ["psql", "-h", HOST, "-U", "postgres", "-d", "postgres", "-q", "-c", sql],
        check=True,
        capture_output=True,
    )


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def ms(seconds: float | None) -> float:
    return math.nan if seconds is None else round(seconds * 1000, 2)


@dataclass
class Figure:
    """One measured figure against its target. `ok` None means informational (no target)."""

    name: str
    value: float
    unit: str
    target: str = ""
    ok: bool | None = None
    note: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": None if math.isnan(self.value) else self.value,
            "unit": self.unit,
            "target": self.target,
            "pass": self.ok,
            "note": self.note,
        }


def figure(
    name: str,
    value: float,
    unit: str,
    *,
    at_most: float | None = None,
    at_least: float | None = None,
    note: str = "",
) -> Figure:
    ok: bool | None = None
    target = ""
    if at_most is not None:
        target = f"<= {at_most:g} {unit}"
        ok = not math.isnan(value) and value <= at_most
    elif at_least is not None:
        target = f">= {at_least:g} {unit}"
        ok = not math.isnan(value) and value >= at_least
    return Figure(name, value, unit, target, ok, note)


def print_table(title: str, figures: list[Figure]) -> None:
    rows = [("figure", "measured", "target", "result")]
    for f in figures:
        value = "n/a" if math.isnan(f.value) else f"{f.value:,.2f}".rstrip("0").rstrip(".")
        result = "info" if f.ok is None else ("PASS" if f.ok else "FAIL")
        rows.append((f.name, f"{value} {f.unit}", f.target or "-", result))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    line = "+".join("-" * (w + 2) for w in widths)
    print(f"\n{title}\n{line}", flush=True)
    for index, row in enumerate(rows):
        print(" | ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if index == 0:
            print(line)
    print(line)
    for f in figures:
        if f.note:
            print(f"  {f.name}: {f.note}")
    print(flush=True)


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False
        ).stdout.rstrip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_info() -> dict[str, Any]:
    """The machine and the code measured (commit, plus files changed since, outside bench/)."""
    changed = [
        line[3:]
        for line in _git("status", "--porcelain").splitlines()
        if line[3:] and not line[3:].startswith("bench/")
    ]
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "uncommitted_changes": changed,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_results(name: str, payload: dict[str, Any]) -> Path:
    """bench/results/<name>.json (<name>-quick.json for a quick run, so it never replaces a
    full run's figures)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}{'-quick' if payload.get('quick') else ''}.json"
    payload = {"benchmark": name, "machine": machine_info(), **payload}
    path.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    say(f"results written to {path.relative_to(ROOT)}")
    return path


def _json_default(value: object) -> object:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Figure):
        return value.as_json()
    return str(value)


def nonce() -> str:
    """A tag the timed fake finds in the provider request body: `bench-<16 hex>`."""
    return f"bench-{secrets.token_hex(8)}"


def reply_text(tokens: int, seed: str = "w") -> str:
    """`tokens` distinct words; the fake sends one word (with its space) per token."""
    return "".join(f"{seed}{i:05d} " for i in range(tokens)).rstrip() + "."


# --- processes --------------------------------------------------------------------------------


def raise_nofile(wanted: int = 1 << 20) -> int:
    """Raise this process's open-file limit to the hard limit; children inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(wanted, hard) if hard != resource.RLIM_INFINITY else wanted
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _child_setup() -> None:
    """In the child, before exec: die with the benchmark, even if it is SIGKILLed."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 8.0) -> None:
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=5)


def rss_kb(pid: int) -> int:
    """Resident set size of a process (VmRSS), in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _system_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / CLK_TCK, sum(fields) / CLK_TCK


def wait_for_quiet(exclude: dict[str, int] | None = None, max_wait: float | None = None) -> float:
    """Wait (bounded) until other processes use under half a core: the machine may be shared.

    Returns the share of a core the others used in the last sample. BENCH_QUIET_WAIT sets
    the longest wait in seconds (default 90; 0 skips the check).
    """
    if max_wait is None:
        max_wait = float(os.environ.get("BENCH_QUIET_WAIT", "90"))
    deadline = time.monotonic() + max_wait
    pids = {"self": os.getpid(), **(exclude or {})}
    told = False
    other = 0.0
    while True:
        meter = CpuMeter(pids)
        time.sleep(2.0)
        other = meter.read()["other"]
        if other < 50 or time.monotonic() > deadline:
            if told or other >= 50:
                say(f"other processes use {other:.0f}% of a core; going ahead")
            return other
        if not told:
            say(f"other processes use {other:.0f}% of a core; waiting up to {max_wait:.0f}s")
            told = True


class CpuMeter:
    """CPU used by each process over an interval, as % of one core; `other` is what every
    other process on the machine used meanwhile (a shared machine skews the figures)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.start_wall = time.monotonic()
        self.start = {name: cpu_seconds(pid) for name, pid in pids.items()}
        self.start_system = _system_busy()[0]

    def read(self) -> dict[str, float]:
        wall = max(1e-6, time.monotonic() - self.start_wall)
        used = {name: cpu_seconds(pid) - self.start[name] for name, pid in self.pids.items()}
        system = _system_busy()[0] - self.start_system
        result = {name: round(100 * value / wall, 1) for name, value in used.items()}
        result["other"] = round(max(0.0, 100 * (system - sum(used.values())) / wall), 1)
        result["machine"] = round(100 * system / wall, 1)
        return result

    def seconds(self) -> dict[str, float]:
        """CPU seconds per process since the start."""
        return {name: cpu_seconds(pid) - self.start[name] for name, pid in self.pids.items()}


class _Interrupted(BaseException):
    """SIGTERM/SIGHUP, turned into an exception so every `finally` and `__exit__` runs."""


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise _Interrupted(f"signal {signum}")


def is_interrupt(error: BaseException | None) -> bool:
    """Ctrl-C or SIGTERM/SIGHUP, possibly wrapped in an exception group by asyncio/anyio."""
    if isinstance(error, KeyboardInterrupt | _Interrupted):
        return True
    if isinstance(error, BaseExceptionGroup):
        return all(is_interrupt(inner) for inner in error.exceptions)
    return False


def run(main: Callable[[], None]) -> None:
    """Run a benchmark's main(); Ctrl-C or SIGTERM end it quietly (the Stack has cleaned up)."""
    try:
        main()
    except BaseException as error:
        if not is_interrupt(error):
            raise
        say("interrupted: every process the benchmark started has been stopped")
        raise SystemExit(130) from None


class Stack:
    """Redis, SQLite, the timed fake provider, a Celery worker and uvicorn, in a temp dir."""

    def __init__(
        self,
        name: str,
        *,
        worker_concurrency: int | None = 8,
        extra_env: dict[str, str] | None = None,
        keep: bool = False,
    ) -> None:
        self.name = name
        self.worker_concurrency = worker_concurrency
        self.extra_env = extra_env or {}
        self.keep = keep
        self.tmp = Path(tempfile.mkdtemp(prefix=f"byok-bench-{name}-"))
        self.services: dict[str, Service] = {}
        self.redis: Any = None
        self.pg_database = ""
        self.env: dict[str, str] = {}
        self.web_port = 0
        self.fake_port = 0
        self._old_handlers: dict[int, Any] = {}
        self.others_at_start = 0.0
        self.errors: dict[str, list[str]] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Stack:
        for signum in (signal.SIGTERM, signal.SIGHUP):
            self._old_handlers[signum] = signal.signal(signum, _on_signal)
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and not is_interrupt(exc):
            for service in self.services.values():
                say(f"--- last lines of {service.name} ({service.log}) ---\n{service.tail()}")
        self.stop()

    def start(self) -> None:
        from core.embedded_redis import EmbeddedRedis
        from vault.crypto import generate_master_key

        nofile = raise_nofile()
        say(f"stack '{self.name}' in {self.tmp} (open files limit {nofile})")
        self.others_at_start = wait_for_quiet()
        self.redis = EmbeddedRedis(self.tmp / "redis.sock").start()
        self.web_port = free_port()
        self.fake_port = free_port()
        self.env = {
            "DJANGO_SETTINGS_MODULE": "byok_site.settings",
            "DJANGO_DEBUG": "0",
            "DJANGO_SECRET_KEY": secrets.token_urlsafe(60),
            "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
            "DJANGO_HTTPS": "0",
            "DJANGO_LOG_LEVEL": "WARNING",
            "DJANGO_STATIC_ROOT": str(self.tmp / "static"),
            "DATABASE_URL": self._database_url(),
            "REDIS_URL": self.redis.url,
            "BYOK_MASTER_KEYS": f"b1:{generate_master_key()}",
            "BYOK_ALLOW_PRIVATE_ENDPOINTS": "1",
            # The benchmarks run many turns per user; per-user limits are not under test.
            "BYOK_MAX_CONCURRENT_TURNS": "1000000",
            "BYOK_RATE_TURNS_PER_MINUTE": "1000000",
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        }
        os.environ.update(self.env)
        self.manage("migrate", "--noinput", "--verbosity", "0")
        self.manage("collectstatic", "--noinput", "--verbosity", "0")
        import django

        django.setup()
        self.spawn(
            "fake",
            [PYTHON, str(ROOT / "bench" / "timed_fake.py"), "--port", str(self.fake_port)],
        )
        if self.worker_concurrency:
            self.spawn(
                "worker",
                [
                    PYTHON,
                    "-m",
                    "celery",
                    "-A",
                    "byok_site",
                    "worker",
                    "--pool",
                    "threads",
                    "--concurrency",
                    str(self.worker_concurrency),
                    "--queues",
                    "default,turns",
                    "--loglevel",
                    "WARNING",
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                    "--hostname",
                    f"bench-{self.name}@localhost",
                ],
            )
        self.spawn(
            "web",
            [
                PYTHON,
                "-m",
                "uvicorn",
                "byok_site.asgi:application",
                "--host",
                HOST,
                "--port",
                str(self.web_port),
                "--workers",
                "1",
                "--lifespan",
                "off",
                "--no-access-log",
                "--log-level",
                "warning",
                "--backlog",
                "4096",
                "--no-proxy-headers",  # as in production: the app reads X-Forwarded-For
            ],
        )
        self._wait_ready()

    def _database_url(self) -> str:
        """SQLite in the temp dir (the default), or with BENCH_DATABASE=postgres a fresh
        database on the machine's PostgreSQL (127.0.0.1:5432, user postgres), dropped at the
        end: production runs on PostgreSQL, where writers do not queue on one file lock."""
        if os.environ.get("BENCH_DATABASE", "sqlite") != "postgres":
            return f"sqlite:///{self.tmp / 'db.sqlite3'}"
        self.pg_database = f"byok_bench_{self.name}_{os.getpid()}"
        _psql(f'DROP DATABASE IF EXISTS "{self.pg_database}"')
        _psql(f'CREATE DATABASE "{self.pg_database}"')
        return f"postgres://postgres@127.0.0.1:5432/{self.pg_database}"

    def stop(self) -> None:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C waits
        try:
            for name in ("web", "worker", "fake"):
                service = self.services.get(name)
                if service is not None:
                    service.stop()
            if self.redis is not None:
                self.redis.stop()
                self.redis = None
            with contextlib.suppress(Exception):
                from django.db import connections

                connections.close_all()
            if self.pg_database:
                _psql(f'DROP DATABASE IF EXISTS "{self.pg_database}" WITH (FORCE)')
            self.errors = self._log_errors()
            for name, lines in self.errors.items():
                say(f"{name} logged errors: " + " | ".join(lines[:3]))
            if self.keep:
                say(f"kept {self.tmp}")
            else:
                shutil.rmtree(self.tmp, ignore_errors=True)
        finally:
            signal.signal(signal.SIGINT, previous)
            for signum, handler in self._old_handlers.items():
                signal.signal(signum, handler)
            self._old_handlers.clear()

    def _log_errors(self, limit: int = 20) -> dict[str, list[str]]:
        """Distinct error lines each service logged (the last line of each traceback)."""
        found: dict[str, list[str]] = {}
        for name, service in self.services.items():
            try:
                lines = service.log.read_text(errors="replace").splitlines()
            except OSError:
                continue
            counts: dict[str, int] = {}
            for line in lines:
                if "/healthz" in line:  # 503 until the worker's first heartbeat: expected
                    continue
                if re.match(r"^[\w.]+(Error|Exception|Exit)\b", line) or " ERROR " in line:
                    counts[line[:300]] = counts.get(line[:300], 0) + 1
            if counts:
                ranked = sorted(counts.items(), key=lambda item: -item[1])[:limit]
                found[name] = [f"{count}x {line}" for line, count in ranked]
        return found

    def manage(self, *args: str) -> None:
        subprocess.run(
            [PYTHON, str(ROOT / "manage.py"), *args],
            cwd=ROOT,
            env={**os.environ, **self.env},
            check=True,
            timeout=180,
            stdout=subprocess.DEVNULL,
        )

    def spawn(self, name: str, args: list[str]) -> Service:
        log = self.tmp / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                args,
                cwd=ROOT,
                env={**os.environ, **self.env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the benchmark, which stops them
                preexec_fn=_child_setup,  # only prctl: no locks taken between fork and exec
            )
        service = Service(name, process, log)
        self.services[name] = service
        return service

    def _wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        waiting = {"fake", "web"} | ({"worker"} if self.worker_concurrency else set())
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            while waiting:
                for name in list(waiting):
                    if not self.services[name].alive():
                        raise RuntimeError(f"{name} exited at start:\n{self.services[name].tail()}")
                if "fake" in waiting and _get_ok(client, f"{self.fake_url}/__bench__/timings"):
                    waiting.discard("fake")
                if "web" in waiting and _get_ok(client, f"{self.web_url}/healthz", any_status=True):
                    waiting.discard("web")
                if "worker" in waiting and self.worker_alive():
                    waiting.discard("worker")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"not ready after {timeout:.0f}s: {sorted(waiting)}")
                time.sleep(0.1)
        say("stack ready: " + ", ".join(f"{s.name} pid {s.pid}" for s in self.services.values()))

    def worker_alive(self) -> bool:
        """The worker has written its heartbeat (byok:workers) into Redis."""
        return bool(self.redis_client().zcard("byok:workers"))

    # -- addresses, clients ------------------------------------------------------------------

    @property
    def web_url(self) -> str:
        return f"http://{HOST}:{self.web_port}"

    @property
    def fake_url(self) -> str:
        return f"http://{HOST}:{self.fake_port}"

    @property
    def fake_base_url(self) -> str:
        return f"{self.fake_url}/v1"

    def pid(self, name: str) -> int:
        return self.services[name].pid

    def pids(self) -> dict[str, int]:
        found = {name: s.pid for name, s in self.services.items()}
        if self.redis is not None and self.redis.process is not None:
            found["redis"] = self.redis.process.pid
        found["bench client"] = os.getpid()
        return found

    def redis_client(self) -> Any:
        import redis

        return redis.Redis(unix_socket_path=str(self.redis.socket_path), decode_responses=True)

    def redis_connections(self) -> int:
        """Clients connected to Redis (CLIENT LIST), not counting the one asking."""
        client = self.redis_client()
        try:
            return len(client.client_list()) - 1
        finally:
            client.close()

    def check_alive(self) -> None:
        for service in self.services.values():
            if not service.alive():
                raise RuntimeError(f"{service.name} died:\n{service.tail()}")

    # -- the fake provider -------------------------------------------------------------------

    def fake_script(self, count: int, **script: Any) -> None:
        """Forget earlier scripts and timings, then queue `count` chat-completion scripts."""
        with httpx.Client(base_url=self.fake_url, timeout=30, trust_env=False) as client:
            client.post("/__fake__/reset").raise_for_status()
            client.post("/__bench__/clear").raise_for_status()
            entry = {"path": "/chat/completions", **script}
            for start in range(0, count, 500):
                batch = [entry] * min(500, count - start)
                client.post("/__fake__/script", json=batch).raise_for_status()

    def fake_timings(self) -> dict[str, dict[str, Any]]:
        with httpx.Client(base_url=self.fake_url, timeout=30, trust_env=False) as client:
            response = client.get("/__bench__/timings")
            response.raise_for_status()
            result: dict[str, dict[str, Any]] = response.json()
            return result

    # -- setup through the ORM and services --------------------------------------------------

    def create_user(self, email: str) -> Any:
        from accounts.models import User

        return User.objects.create_user(email=email, password=PASSWORD)

    def create_key(self, user: Any) -> Any:
        from keys.services import RequestInfo, provider_key_create

        return provider_key_create(
            owner=user,
            preset_slug="custom",
            label="Bench fake",
            secret="sk-bench-" + secrets.token_hex(16),
            base_url=self.fake_base_url,
            info=RequestInfo(actor=user, ip_address=HOST),
        )

    def wait_keys_checked(self, keys: list[Any], timeout: float = 30.0) -> None:
        """Wait until the worker has verified each new key (it calls GET /models)."""
        if not self.worker_concurrency:
            return
        deadline = time.monotonic() + timeout
        for key in keys:
            while True:
                key.refresh_from_db()
                if key.status != "checking":
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("the worker did not verify the provider key in time")
                time.sleep(0.05)
            if key.status != "valid":
                raise RuntimeError(f"key status is {key.status!r}: {key.status_reason}")

    def create_conversations(self, user: Any, key: Any, count: int) -> list[str]:
        from chat.services import conversation_create

        return [str(conversation_create(owner=user, key=key, model=MODEL).pk) for _ in range(count)]

    def wait_turns_settled(self, timeout: float = 60.0) -> int:
        """Wait (bounded) until no reply is queued or running; returns how many still are."""
        from chat.models import Message

        deadline = time.monotonic() + timeout
        while True:
            pending = Message.objects.filter(status__in=["queued", "running"]).count()
            if pending == 0 or time.monotonic() > deadline:
                return pending
            time.sleep(0.25)

    def login(self, email: str) -> dict[str, str]:
        """Sign in over HTTP like a browser: GET the form (CSRF cookie and token), POST it."""
        with httpx.Client(base_url=self.web_url, timeout=30, trust_env=False) as client:
            page = client.get("/accounts/login/")
            page.raise_for_status()
            found = CSRF_FIELD.search(page.text)
            if not found:
                raise RuntimeError("no CSRF token on the login page")
            response = client.post(
                "/accounts/login/",
                data={
                    "csrfmiddlewaretoken": found.group(1),
                    "username": email,
                    "password": PASSWORD,
                    "next": "/",
                },
            )
            if response.status_code != 302 or "sessionid" not in client.cookies:
                raise RuntimeError(f"login failed: {response.status_code}")
            return {name: client.cookies[name] for name in ("sessionid", "csrftoken")}


def _get_ok(client: httpx.Client, url: str, *, any_status: bool = False) -> bool:
    try:
        response = client.get(url)
    except httpx.HTTPError:
        return False
    return any_status or response.status_code == 200


# --- one turn over HTTP -------------------------------------------------------------------------


@dataclass
class Turn:
    """One chat turn as a client saw it. Times are time.monotonic() seconds."""

    conversation: str
    nonce: str
    message_id: str = ""
    t_start: float = 0.0  # POST sent
    t_posted: float = 0.0  # POST answered
    t_opened: float = 0.0  # SSE response headers received
    t_first: float | None = None  # first `delta` event
    t_done: float | None = None  # `done` / `error` event
    final: str | None = None
    text: str = ""
    events: int = 0
    max_gap: float = 0.0  # longest silence between two events after the first delta
    # Stream entry ids are "<Redis server ms>-<seq>": when the worker's XADD landed.
    xadd_first: float | None = None  # XADD time of the first delta (monotonic)
    max_xadd_gap: float = 0.0  # longest gap between two XADDs after the first delta
    max_delivery: float = 0.0  # longest XADD -> client time (Redis, web, network, client)
    max_stream_gap: float = 0.0  # the same, between deltas only
    done_gap: float = 0.0  # last delta -> `done` (the worker stores the turn in between)
    done_xadd_gap: float = 0.0  # the same, between the two XADDs
    error: str | None = None
    fake: dict[str, Any] = field(default_factory=dict)  # the timed fake's record
    db: dict[str, float] = field(default_factory=dict)  # the reply row's times (monotonic)
    _last_event_at: float = field(default=0.0, repr=False)
    _last_xadd: float = field(default=0.0, repr=False)
    _last_delta_at: float = field(default=0.0, repr=False)
    _last_delta_xadd: float = field(default=0.0, repr=False)

    @property
    def ok(self) -> bool:
        return self.error is None and self.final == "done"

    @property
    def ttft(self) -> float | None:
        return None if self.t_first is None else self.t_first - self.t_start

    def event(self, kind: str, data: str, at: float, event_id: str = "") -> bool:
        """Take one SSE event received at `at`; True when it is the last one."""
        if kind not in ("delta", "done", "error"):
            return False
        xadd = xadd_time(event_id)
        if self.t_first is not None:
            self.max_gap = max(self.max_gap, at - self._last_event_at)
            if kind == "delta":
                self.max_stream_gap = max(self.max_stream_gap, at - self._last_event_at)
            if xadd is not None:
                self.max_xadd_gap = max(self.max_xadd_gap, xadd - self._last_xadd)
        self._last_event_at = at
        if xadd is not None:
            self._last_xadd = xadd
            # Entry ids have 1 ms resolution: count only what is certainly delivery time.
            self.max_delivery = max(self.max_delivery, at - xadd - 0.001)
        self.events += 1
        if kind == "delta":
            self._last_delta_at = at
            self._last_delta_xadd = xadd or 0.0
            if self.t_first is None:
                self.t_first = at
                self.xadd_first = xadd
            self.text += json.loads(data).get("text", "")
            return False
        if self.t_first is not None:
            self.done_gap = at - self._last_delta_at
            if xadd is not None and self._last_delta_xadd:
                self.done_xadd_gap = xadd - self._last_delta_xadd
        self.t_done = at
        self.final = kind
        if kind == "error":
            self.error = json.loads(data).get("message", "error")
        return True


def xadd_time(event_id: str) -> float | None:
    """The monotonic time of a Redis stream entry id (its ms part is Redis's wall clock)."""
    head, _, _ = event_id.partition("-")
    if not head.isdigit():
        return None
    return int(head) / 1000 - WALL_OFFSET


def new_client(cookies: dict[str, str], base_url: str, connections: int = 1000) -> Any:
    return httpx.AsyncClient(
        base_url=base_url,
        cookies=cookies,
        headers={"X-CSRFToken": cookies["csrftoken"]},
        timeout=httpx.Timeout(60.0),
        limits=httpx.Limits(
            max_connections=connections,
            max_keepalive_connections=connections,
            # Below uvicorn's 5 s keep-alive: never reuse a connection the server is closing.
            keepalive_expiry=2.0,
        ),
        trust_env=False,
    )


async def post_message(client: httpx.AsyncClient, turn: Turn, text: str) -> str:
    """POST the message as the chat page does (htmx); returns the turn's stream path."""
    turn.t_start = time.monotonic()
    response = await client.post(
        f"/chat/c/{turn.conversation}/send/",
        data={"text": f"{text} [{turn.nonce}]"},
        headers={"HX-Request": "true"},  # the client sends X-CSRFToken on every request
    )
    turn.t_posted = time.monotonic()
    found = STREAM_URL.search(response.text) if response.status_code == 200 else None
    if not found:
        raise RuntimeError(f"send failed: {response.status_code} {response.text[:200]!r}")
    turn.message_id = found.group(1).split("/")[3]
    return found.group(1)


async def read_stream_httpx(client: httpx.AsyncClient, path: str, turn: Turn) -> None:
    """Read a turn's SSE stream with httpx until `done` or `error`."""
    headers = {"Accept": "text/event-stream"}
    async with client.stream("GET", path, headers=headers) as response:
        turn.t_opened = time.monotonic()
        if response.status_code != 200:
            raise RuntimeError(f"stream answered {response.status_code}")
        kind, data, event_id = "", "", ""
        async for line in response.aiter_lines():
            if line == "":
                if kind and turn.event(kind, data, time.monotonic(), event_id):
                    return
                kind, data, event_id = "", "", ""
            elif line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:"):
                data = line[5:].lstrip()
            elif line.startswith("id:"):
                event_id = line[3:].strip()
    raise RuntimeError("stream ended without done/error")


async def run_turn_httpx(
    client: httpx.AsyncClient, conversation: str, text: str, timeout: float
) -> Turn:
    """POST a message, then follow its stream: what the chat page does. Never raises."""
    turn = Turn(conversation, nonce())
    try:
        async with asyncio.timeout(timeout):
            path = await post_message(client, turn, text)
            await read_stream_httpx(client, path, turn)
    except Exception as error:
        turn.error = turn.error or f"{type(error).__name__}: {error}"
    return turn


# --- a small raw HTTP/1.1 SSE client (cheap enough for thousands of streams) --------------------


class RawSse:
    """One SSE GET over a plain asyncio connection: chunked decoding and event splitting only.

    Costs a few kB per connection in the client, where an httpx stream costs far more, so one
    client process can hold thousands of streams or parse thousands of events per second.
    """

    def __init__(self, port: int, path: str, cookies: dict[str, str]) -> None:
        self.port = port
        self.path = path
        self.cookie = "; ".join(f"{k}={v}" for k, v in cookies.items())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self._buffer = b""

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        request = (
            f"GET {self.path} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n"
            f"Accept: text/event-stream\r\nCookie: {self.cookie}\r\n\r\n"
        )
        self.writer.write(request.encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = head.split(b" ", 2)[1]
        if status != b"200":
            raise RuntimeError(f"stream answered {status.decode()}")
        if b"transfer-encoding: chunked" not in head.lower():
            raise RuntimeError("expected a chunked event stream")

    async def chunk(self) -> bytes | None:
        """The next chunk of the body; None at its end."""
        assert self.reader is not None
        size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            return None
        return (await self.reader.readexactly(size + 2))[:-2]

    async def events(self) -> Any:
        """Yield (time received, event name, data, id) per event; comments are skipped."""
        while True:
            data = await self.chunk()
            if data is None:
                return
            at = time.monotonic()
            self._buffer += data
            while b"\n\n" in self._buffer:
                block, self._buffer = self._buffer.split(b"\n\n", 1)
                kind, payload, event_id = "", "", ""
                for line in block.decode().split("\n"):
                    if line.startswith("event:"):
                        kind = line[6:].strip()
                    elif line.startswith("data:"):
                        payload = line[5:].lstrip()
                    elif line.startswith("id:"):
                        event_id = line[3:].strip()
                    elif line.startswith("retry:"):
                        kind = "retry"
                if kind:
                    yield at, kind, payload, event_id

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


async def read_stream_raw(port: int, path: str, cookies: dict[str, str], turn: Turn) -> None:
    stream = RawSse(port, path, cookies)
    try:
        await stream.open()
        turn.t_opened = time.monotonic()
        async for at, kind, data, event_id in stream.events():
            if turn.event(kind, data, at, event_id):
                return
        raise RuntimeError("stream ended without done/error")
    finally:
        stream.close()


async def run_turn_raw(
    client: httpx.AsyncClient,
    port: int,
    cookies: dict[str, str],
    conversation: str,
    text: str,
    timeout: float,
) -> Turn:
    """POST with httpx, follow the stream with the raw client. Never raises."""
    turn = Turn(conversation, nonce())
    try:
        async with asyncio.timeout(timeout):
            path = await post_message(client, turn, text)
            await read_stream_raw(port, path, cookies, turn)
    except Exception as error:
        turn.error = turn.error or f"{type(error).__name__}: {error}"
    return turn


# --- the direct call: the same script, straight to the fake --------------------------------------


@dataclass
class DirectCall:
    nonce: str
    t_start: float = 0.0
    t_first: float | None = None
    t_last: float | None = None
    t_end: float | None = None
    text: str = ""
    max_gap: float = 0.0
    error: str | None = None
    fake: dict[str, Any] = field(default_factory=dict)

    @property
    def ttft(self) -> float | None:
        return None if self.t_first is None else self.t_first - self.t_start


CONTENT = re.compile(rb'"content": ?"[^"]')


async def direct_call(
    client: httpx.AsyncClient, text: str, timeout: float, *, keep_text: bool = False
) -> DirectCall:
    """One streaming chat completion straight to the fake, as the worker would make it.

    Events are only searched for reply text (JSON is parsed only with `keep_text`), so one
    client process can follow many direct streams without becoming the bottleneck.
    """
    call = DirectCall(nonce())
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"{text} [{call.nonce}]"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    headers = {"authorization": "Bearer sk-bench-direct"}
    call.t_start = time.monotonic()
    try:
        async with (
            asyncio.timeout(timeout),
            client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as response,
        ):
            response.raise_for_status()
            buffer = b""
            async for chunk in response.aiter_raw():
                now = time.monotonic()
                buffer += chunk
                *events, buffer = buffer.split(b"\n\n")
                for event in events:
                    if CONTENT.search(event):
                        if call.t_first is None:
                            call.t_first = now
                        else:
                            call.max_gap = max(call.max_gap, now - (call.t_last or now))
                        call.t_last = now
                        if keep_text:
                            delta = json.loads(event.partition(b"data: ")[2])["choices"][0]
                            call.text += delta["delta"]["content"]
        call.t_end = time.monotonic()
    except Exception as error:
        call.error = f"{type(error).__name__}: {error}"
    return call


def attach_timings(stack: Stack, items: list[Any]) -> None:
    """Give each Turn/DirectCall the fake's record of its provider call."""
    timings = stack.fake_timings()
    for item in items:
        item.fake = timings.get(item.nonce, {})


def attach_db_times(turns: list[Turn]) -> None:
    """Read each reply's own timestamps from the database (the service's created_at, the
    worker's started_at and finished_at), converted to the monotonic clock."""
    from chat.models import Message

    ids = [t.message_id for t in turns if t.message_id]
    rows: dict[str, dict[str, float]] = {}
    for start in range(0, len(ids), 500):
        for pk, *stamps in Message.objects.filter(pk__in=ids[start : start + 500]).values_list(
            "pk", "created_at", "started_at", "finished_at"
        ):
            rows[str(pk)] = {
                name: stamp.timestamp() - WALL_OFFSET
                for name, stamp in zip(("created", "started", "finished"), stamps, strict=True)
                if stamp is not None
            }
    for turn in turns:
        turn.db = rows.get(turn.message_id, {})


async def staggered(
    count: int, spread: float, make: Callable[[int], Any], *, limit: int | None = None
) -> list[Any]:
    """Start `count` coroutines evenly over `spread` seconds; gather their results."""
    semaphore = asyncio.Semaphore(limit) if limit else None

    async def one(index: int) -> Any:
        await asyncio.sleep(spread * index / max(1, count))
        if semaphore is None:
            return await make(index)
        async with semaphore:
            return await make(index)

    return await asyncio.gather(*(one(i) for i in range(count)))


def summary_ms(values: list[float]) -> dict[str, float]:
    """p50/p95/p99/max of seconds, in milliseconds."""
    return {
        "n": len(values),
        "p50": ms(pct(values, 50)),
        "p95": ms(pct(values, 95)),
        "p99": ms(pct(values, 99)),
        "max": ms(max(values)) if values else math.nan,
    }


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    start = time.monotonic()
    say(f"{name} ...")
    yield
    say(f"{name}: {time.monotonic() - start:.1f}s")


def unique_email(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}@bench.test"
