"""What ``serve`` checks before it says anything is served: fail first, fast, and in one line.

In order: the manifest and every artefact's SHA-256, the combinations, the backend (its package,
and for TensorRT the GPU and an engine for this machine for every graph), then the listening
socket. Nothing loads a model before all of these pass, and a failure is one line that names the
cause and the fix.

Exit codes (vision_node/cli.py): 2 when the configuration or the artefacts are wrong, which a restart
cannot cure; 1 for what can pass (the port still held by the previous process, a failure at run
time).
"""

from __future__ import annotations

import socket

from ..config import Config
from ..contract import COMBINE
from ..errors import StartupError
from . import engines


def check(config: Config, default_backends: bool = True):
    """(the served capabilities, the GPU runtime for a TensorRT backend or None), checked; StartupError with a
    one-line reason otherwise. The node goes on with both, so nothing checked here is done twice."""
    served = engines.load(config.engines, config.capabilities, onnxruntime=config.backend == "onnxruntime")
    check_combinations(config, served)
    _check_stream_encoder(config)
    gpu = _check_backend(config, served) if default_backends else None
    return served, gpu


def _check_stream_encoder(config: Config) -> None:
    """Streams' maps leave as H.264: the encoder asked for must open here (NVENC needs a GPU and FFmpeg with it)."""
    if not config.stream_capacity:
        return
    from ..streams.video import encoder_works  # PyAV is imported only where streams are served

    why = encoder_works(config.stream_encoder)
    if why:
        raise StartupError(f"--stream-encoder {why} (or --stream-capacity 0 to serve no streams)")


def check_combinations(config: Config, served) -> None:
    for combination in config.combinations:
        missing = [c for c in combination.split(COMBINE) if c not in served]
        if missing:
            raise StartupError(f"--combinations {combination}: {', '.join(missing)} is not served here")


def _check_backend(config: Config, served: dict[str, engines.ServedCapability]):
    if config.backend == "onnxruntime":
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise StartupError(
                f"ONNX Runtime is not installed ({err}): pip install -e '.[cpu]' (or '.[gpu]' on an NVIDIA GPU)"
            ) from None
        from ..runtime.onnxruntime import _providers

        _providers(ort, config.device)  # device cuda without onnxruntime-gpu: a StartupError that says so
        return None
    from ..runtime.flavours import flavour
    from ..runtime.tensorrt import TensorRTBackend, gpu_runtime

    if config.gpu_decode:
        from ..runtime.gpu_decode import import_nvimgcodec

        import_nvimgcodec()  # installed, or a StartupError naming the extra; its decoder opens with the engines
    rt = gpu_runtime(flavour(config.backend), config.engines)  # the package, pycuda and a GPU
    for capability in served.values():
        for graph in capability.graphs:
            TensorRTBackend.engine_for(graph, rt)  # an engine for this machine is listed and on disk
    return rt


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound now (uvicorn takes it), so a taken port fails before anything loads."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {err.strerror} (another process holds it? --port)") from None
    sock.set_inheritable(True)
    return sock
