"""Helpers for the server tests: a TestClient that waits for readiness, frames as bodies, a gated backend."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image
from starlette.testclient import TestClient

from benchmarks.nodeproc import free_port  # shared with the tests
from vision_node import samples
from vision_node.config import Config
from vision_node.contract import FRAME_INPUT
from vision_node.http.app import create_app
from vision_node.runtime.onnxruntime import OnnxRuntimeBackend
from vision_node.serving.engines import load

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def in_process_backends(engines):
    """{capability: (open backend, its first graph)}: what results over HTTP must equal."""
    opened = {}
    for name, entry in load(engines).items():
        graph = entry.graphs[0]
        opened[name] = (OnnxRuntimeBackend(graph.path, graph.outputs, entry.bounds).__enter__(), graph)
    try:
        yield opened
    finally:
        for backend, _ in opened.values():
            backend.__exit__(None, None, None)


def wait_ready(client, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/ready").status_code == 200:
            return
        time.sleep(0.02)
    raise AssertionError(f"not ready after {timeout} s: {client.get('/health').json()}")


def wait_loaded(client, timeout: float = 30.0) -> dict:
    """/health once loading has ended, ready or not."""
    deadline = time.monotonic() + timeout
    while (health := client.get("/health").json())["status"] == "LOADING":
        assert time.monotonic() < deadline, f"still loading after {timeout} s"
        time.sleep(0.02)
    return health


@contextmanager
def node_client(engines, open_backend=None, wait: bool = True, **settings):
    """The real app with its lifespan running (``with TestClient``), ready unless ``wait`` is False."""
    app = create_app(Config(engines=engines, **settings), open_backend)
    with TestClient(app, raise_server_exceptions=False) as client:
        if wait:
            wait_ready(client)
        yield client


def jpeg(frame: np.ndarray, quality: int = 90) -> bytes:
    out = io.BytesIO()
    Image.fromarray(frame).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def png(frame: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(frame).save(out, format="PNG")
    return out.getvalue()


def raw_type(frame: np.ndarray, **params) -> str:
    extra = "".join(f"; {k}={v}" for k, v in params.items())
    return f"application/octet-stream; width={frame.shape[1]}; height={frame.shape[0]}{extra}"


def metadata(response) -> dict:
    return json.loads(response.headers["x-metadata"])


def parts(response) -> list[tuple[str, str, dict, bytes]]:
    """(name, media type, X-Metadata, body) of each part of a multipart/mixed answer, by Python's MIME parser."""
    import email
    import email.policy

    head = f"Content-Type: {response.headers['content-type']}\r\n\r\n".encode()
    message = email.message_from_bytes(head + response.content, policy=email.policy.HTTP)
    assert message.get_content_type() == "multipart/mixed"
    return [
        (
            part.get_param("name", header="content-disposition"),
            part.get_content_type(),
            json.loads(part["x-metadata"]),
            part.get_payload(decode=True),
        )
        for part in message.iter_parts()
    ]


def metric(client, name: str, **labels) -> float:
    """One sample of the node's /metrics, read by prometheus_client's parser (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


def image(response) -> Image.Image:
    return Image.open(io.BytesIO(response.content))


def frame(h: int = 120, w: int = 160, seed: int = 3) -> np.ndarray:
    return samples.frame(h, w, seed)


class WrappedBackend:
    """A real backend with the same face; test doubles subclass it and change ``infer``."""

    precision = None  # a test double says no precision (X-Metadata, /capabilities)
    gpu_decoder = None  # JPEG frames are decoded on the CPU, as ONNX Runtime's are

    def __init__(self, inner: OnnxRuntimeBackend):
        self.inner = inner
        self.name, self.max_batch = inner.name, inner.max_batch

    @property
    def device(self):
        return self.inner.device

    def __enter__(self):
        self.inner.__enter__()
        return self

    def __exit__(self, *exc):
        self.inner.__exit__(*exc)

    def infer(self, inputs, stop=None, owned=()):
        return self.inner.infer(inputs, stop, owned)

    def infer_jpeg(self, data, height, width, decoder, inputs=None, owned=()):
        return self.inner.infer_jpeg(data, height, width, decoder, inputs, owned)

    def memory(self):
        return self.inner.memory()


class GatedBackend(WrappedBackend):
    """Test double around the real ONNX Runtime backend: ``infer`` waits while ``gate`` is clear.

    It only holds frames in flight (to observe loading, queueing, batching and deadlines); the
    results are the real backend's.
    """

    def __init__(self, inner: OnnxRuntimeBackend, gate: threading.Event):
        super().__init__(inner)
        self.gate = gate
        self.batches: list[int] = []  # the batch size of each frame run
        self.waiting = threading.Event()  # set when a frame is held at the gate

    def infer(self, inputs, stop=None, owned=()):
        self.waiting.set()
        self.gate.wait()
        self.batches.append(len(inputs[FRAME_INPUT]))
        return self.inner.infer(inputs, stop, owned)


def gated(gate: threading.Event, max_batch: int = 1, opened: list | None = None):
    """An ``open_backend`` for ``create_app``: each real backend in a ``GatedBackend`` (listed in ``opened``)."""

    def for_capability(served):
        def open_graph(graph):
            inner = OnnxRuntimeBackend(graph.path, graph.outputs, served.bounds, max_batch=max_batch)
            backend = GatedBackend(inner, gate)
            if opened is not None:
                opened.append(backend)
            return backend

        return open_graph

    return for_capability


def start_node(engines, log_path, *argv, module="vision_node", **env):
    """``python -m vision_node serve`` (or ``python -m MODULE ARGV...``) as a process; ``VISION_NODE_*`` in ``env``."""
    port = int(env.pop("VISION_NODE_PORT", 0)) or free_port()
    environ = {**os.environ, "VISION_NODE_ENGINES": str(engines), "VISION_NODE_PORT": str(port), **env}
    command = [sys.executable, "-m", module, *(argv or ["serve"])]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, cwd=ROOT, env=environ, stdout=log, stderr=log)
    return proc, f"http://127.0.0.1:{port}"


def stop(proc) -> int:
    proc.terminate()
    try:
        return proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def wait_for_http(url: str, proc, log_path, timeout: float = 60.0) -> None:
    """Poll ``url`` until it answers 200; fail with the process's log if it exits or times out."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, Path(log_path).read_text()
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{url} not 200 after {timeout} s:\n{Path(log_path).read_text()}")


def post(client, path, f, kind="raw", **params):
    if kind == "raw":
        return client.post(path, content=f.tobytes(), headers={"content-type": raw_type(f, **params)})
    body, media = (jpeg(f), "image/jpeg") if kind == "jpeg" else (png(f), "image/png")
    extra = "".join(f"; {k}={v}" for k, v in params.items())
    return client.post(path, content=body, headers={"content-type": media + extra})


def assert_error(response, status, code, *words):
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code
    for word in words:
        assert word in body["detail"], body["detail"]
    return body
