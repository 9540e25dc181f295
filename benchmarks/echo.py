"""The HTTP stack alone: a Starlette app on uvicorn that reads the body and answers ``?n=`` bytes.

Served the same way as the node (uvicorn with the same loop and parser), it gives the floor an
HTTP request of a given size costs on this machine, so node overhead can be read against it.
``/echo-hop`` adds what any node that keeps its model off the event loop pays on top: one round
trip to a worker thread and back.
"""

import asyncio
from concurrent.futures import ThreadPoolExecutor

from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

_ZEROS = bytes(64 << 20)
_WORKER = ThreadPoolExecutor(1, thread_name_prefix="echo-worker")


async def echo(request):
    await request.body()
    n = int(request.query_params.get("n", "0"))
    return Response(memoryview(_ZEROS)[:n], media_type="application/octet-stream")


async def echo_hop(request):
    await request.body()
    await asyncio.get_running_loop().run_in_executor(_WORKER, int)
    n = int(request.query_params.get("n", "0"))
    return Response(memoryview(_ZEROS)[:n], media_type="application/octet-stream")


app = Starlette(routes=[Route("/echo", echo, methods=["POST"]), Route("/echo-hop", echo_hop, methods=["POST"])])
