"""Start `textinv ui` as users do (a subprocess on a free loopback port) for the end-to-end UI tests."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "orange-star"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_ui(output_root: Path, *extra: str, timeout: float = 180.0):
    """Yield the URL of a `textinv ui` server; its output is in output_root/../server.log."""
    port = free_port()
    log_path = Path(output_root).parent / f"server-{port}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "textinv", "ui", "--port", str(port), "--output-root", str(output_root), *extra],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if server.poll() is not None:
                raise AssertionError(f"textinv ui exited ({server.returncode}): {log_path.read_text()[-2000:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise AssertionError(f"textinv ui did not listen within {timeout} s: {log_path.read_text()[-2000:]}")
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/", port
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def non_loopback_address() -> str | None:
    """This machine's address on its network, if it has one (to show the server is not reachable there)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET: nothing is sent, it only picks the outgoing interface
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address
