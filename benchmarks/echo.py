"""The HTTP stack alone: a Starlette app on uvicorn that reads the body and answers ``?n=`` bytes.

Served the same way as the node (uvicorn with the same loop and parser), it gives the floor an
HTTP request of a given size costs on this machine, so node overhead can be read against it.
``/echo-hop`` adds what any node that keeps its model off the event loop pays on top: one round
trip to a worker thread and back. ``/echo-wait?ms=`` keeps that worker asleep for ``ms``, as long
as a model would take. ``/model?height=&width=`` is the barest node: the body as a frame through
the ONNX graph named by ``ECHO_MODEL`` (ONNX Runtime, default options, ``session.run`` on the
worker), answering the bytes of its output ``ECHO_MODEL_OUTPUT``. The worker's own time (the
sleep, the run), measured on the worker as the node measures its inference, is in ``X-Wait-ms``
for the caller to subtract.
"""

import asyncio
import functools
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

_ZEROS = bytes(64 << 20)
_WORKER = ThreadPoolExecutor(1, thread_name_prefix="echo-worker")


def _answer(request, headers=None) -> Response:
    n = int(request.query_params.get("n", "0"))
    return Response(memoryview(_ZEROS)[:n], media_type="application/octet-stream", headers=headers)


async def echo(request):
    await request.body()
    return _answer(request)


async def echo_hop(request):
    await request.body()
    await asyncio.get_running_loop().run_in_executor(_WORKER, int)
    return _answer(request)


def _sleep(seconds: float) -> float:
    start = time.perf_counter()
    time.sleep(seconds)
    return time.perf_counter() - start


async def echo_wait(request):
    await request.body()
    seconds = float(request.query_params.get("ms", "0")) / 1000
    waited = await asyncio.get_running_loop().run_in_executor(_WORKER, _sleep, seconds)
    return _answer(request, {"X-Wait-ms": f"{waited * 1000:.3f}"})


@functools.cache
def _session():
    """The session, its frame input's name and the output asked for: looked up once, as the node does."""
    import onnxruntime as ort  # only /model needs it

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(os.environ["ECHO_MODEL"], options, providers=["CPUExecutionProvider"])
    return session, session.get_inputs()[0].name, [os.environ["ECHO_MODEL_OUTPUT"]]


def _run(frame: np.ndarray) -> tuple[np.ndarray, float]:
    session, frame_input, output = _session()
    start = time.perf_counter()
    (out,) = session.run(output, {frame_input: frame})
    return out, time.perf_counter() - start


async def model(request):
    body = await request.body()
    h, w = int(request.query_params["height"]), int(request.query_params["width"])
    frame = np.frombuffer(body, np.uint8).reshape(1, h, w, 3)
    out, seconds = await asyncio.get_running_loop().run_in_executor(_WORKER, _run, frame)
    body = memoryview(np.ascontiguousarray(out)).cast("B")
    return Response(body, media_type="application/octet-stream", headers={"X-Wait-ms": f"{seconds * 1000:.3f}"})


app = Starlette(
    routes=[
        Route("/echo", echo, methods=["POST"]),
        Route("/echo-hop", echo_hop, methods=["POST"]),
        Route("/echo-wait", echo_wait, methods=["POST"]),
        Route("/model", model, methods=["POST"]),
    ]
)
