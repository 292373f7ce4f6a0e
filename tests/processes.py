"""Real processes for the reliability tests: a Celery worker of its own (to kill with
SIGKILL) and a TCP proxy in front of the database (to make it unreachable and back)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from django.conf import settings
from django.db import connection

from core.heartbeat import live_workers
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent


def database_url(*, host: str | None = None, port: int | None = None) -> str:
    """The URL of the test database this process uses (optionally through a proxy)."""
    config = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{config['NAME']}"
    user = config.get("USER") or "postgres"
    password = f":{config['PASSWORD']}" if config.get("PASSWORD") else ""
    where = f"{host or config.get('HOST') or '127.0.0.1'}:{port or config.get('PORT') or 5432}"
    return f"postgres://{user}{password}@{where}/{config['NAME']}"


class WorkerProcess:
    """`celery worker` in a process of its own, on the test database and Redis."""

    def __init__(self, *, database: str, env: dict[str, str]) -> None:
        self.hostname = f"durable-{os.getpid()}-{id(self)}@test"
        environment = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "byok_site.settings_test",
            "DATABASE_URL": database,
            "REDIS_URL": settings.REDIS_URL,
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        self.log_path = ROOT / "var" / f"test-worker-{os.getpid()}-{id(self)}.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115 -- open for the process's life
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "byok_site",
                "worker",
                "--pool",
                "threads",
                "--concurrency",
                "2",
                "--queues",
                "default,turns",
                "--without-gossip",
                "--without-mingle",
                "--loglevel",
                "WARNING",
                "--hostname",
                self.hostname,
            ],
            cwd=ROOT,
            env=environment,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_until(
            lambda: self.hostname in live_workers() or self.process.poll() is not None,
            "the worker process did not start",
            timeout=60,
        )
        assert self.process.poll() is None, self.output()

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text()[-20000:]

    def kill(self) -> None:
        """SIGKILL: no shutdown, no cleanup, nothing stored."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()
        self.log_path.unlink(missing_ok=True)


@contextmanager
def worker_process(*, database: str | None = None, **env: str) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(database=database or database_url(), env=env)
    try:
        yield worker
    finally:
        worker.stop()


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target. `cut()` drops every connection and refuses
    new ones (the server looks gone); `restore()` listens again on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._open = self._open, []
        if listener is not None:
            with suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for sock in sockets:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._open += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with suppress(OSError):
                sink.shutdown(socket.SHUT_WR)
