"""Start ``python -m vision_node serve`` as its own process and time it: spawn -> ready -> first inference."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class NodeProcess:
    proc: subprocess.Popen
    port: int
    log: Path
    spawned: float  # time.perf_counter() just before the spawn

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def spawn(engines: Path, log: Path, **env) -> NodeProcess:
    port = free_port()
    environ = {**os.environ, "VISION_NODE_ENGINES": str(engines), "VISION_NODE_PORT": str(port)}
    environ.update({f"VISION_NODE_{k.upper()}": str(v) for k, v in env.items()})
    with open(log, "w") as out:
        spawned = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "vision_node", "serve"], env=environ, stdout=out, stderr=out)
    return NodeProcess(proc, port, log, spawned)


def get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_ready(node: NodeProcess, timeout: float = 120.0, poll_s: float = 0.005) -> float:
    """Seconds from spawn to the first 200 from /ready; raises with the node's log if it dies or times out."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if node.proc.poll() is not None:
            raise RuntimeError(f"the node exited ({node.proc.returncode}):\n{node.log.read_text()}")
        try:
            if get(node.port, "/ready")[0] == 200:
                return time.perf_counter() - node.spawned
        except OSError:
            pass
        time.sleep(poll_s)
    raise RuntimeError(f"not ready after {timeout} s:\n{node.log.read_text()}")


def capabilities(port: int) -> dict:
    status, body = get(port, "/capabilities")
    if status != 200:
        raise RuntimeError(f"/capabilities answered {status}")
    return json.loads(body)["capabilities"]
