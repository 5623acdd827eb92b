"""Throwaway ChromaDB servers (`chroma run`, shipped with the chromadb package) on free loopback
ports, for tests.

Usable outside pytest too::

    from support.chroma_server import chroma_server      # with tests/ on sys.path
    with chroma_server(tmp_dir) as server:
        print(server.host, server.port)

Each server keeps its data in its own folder (`FOLDER/data`), logs to `FOLDER/chroma.log`,
runs with telemetry off, and is stopped by its PID, never by name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHROMA = Path(sys.executable).parent / "chroma"


@dataclass
class ChromaServer:
    port: int
    folder: Path
    pid: int
    proc: subprocess.Popen[bytes]
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def client(self) -> Any:
        import chromadb

        return chromadb.HttpClient(host=self.host, port=self.port,
                                   settings=chromadb.Settings(anonymized_telemetry=False))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        try:
            s.connect(("127.0.0.1", port))
        except OSError:
            return False
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/heartbeat",
                                    timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def start(folder: Path) -> ChromaServer:
    """Start `chroma run` with its data in `folder`/data; return once it answers heartbeats."""
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "ANONYMIZED_TELEMETRY": "False"}
    for _ in range(5):
        port = free_port()
        log = open(folder / "chroma.log", "ab")  # noqa: SIM115 - the child keeps it
        proc = subprocess.Popen([str(CHROMA), "run", "--path", str(folder / "data"),
                                 "--host", "127.0.0.1", "--port", str(port)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                start_new_session=True)
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            if _answers(port):
                return ChromaServer(port, folder, proc.pid, proc)
            time.sleep(0.05)
        if proc.poll() is None:
            _kill(proc)
            raise RuntimeError(f"chroma run in {folder} did not answer: "
                               f"{(folder / 'chroma.log').read_text()[-1000:]}")
        # exited: the port was probably taken meanwhile; try another
    raise RuntimeError(f"chroma run did not start: {(folder / 'chroma.log').read_text()[-1000:]}")


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)


def stop(server: ChromaServer) -> None:
    """SIGTERM by PID, then SIGKILL if it is still there after 10 s."""
    _kill(server.proc)


@contextlib.contextmanager
def chroma_server(folder: Path) -> Iterator[ChromaServer]:
    server = start(folder)
    try:
        yield server
    finally:
        stop(server)
