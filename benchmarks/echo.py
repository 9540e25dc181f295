"""The HTTP stack alone: a Starlette app on uvicorn that reads the body and answers ``?n=`` bytes.

Served the same way as the node (uvicorn with the same loop and parser), it gives the floor an
HTTP request of a given size costs on this machine, so node overhead can be read against it.
"""

from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

_ZEROS = bytes(64 << 20)


async def echo(request):
    await request.body()
    n = int(request.query_params.get("n", "0"))
    return Response(memoryview(_ZEROS)[:n], media_type="application/octet-stream")


app = Starlette(routes=[Route("/echo", echo, methods=["POST"])])
