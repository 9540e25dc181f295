"""A STAND-IN ENGINE: what the node costs around a GPU-fast network, measured on a CPU.

On a GPU the network takes 1-3 ms a frame and holds no Python lock while it runs (TensorRT's
``execute_async_v3`` and the synchronise release the GIL). This backend does exactly that much: it
sleeps ``--standin-ms`` (``time.sleep`` releases the GIL) and returns outputs of the graph's names,
dtypes and shapes from buffers it made once per frame size, as the real backends return views of
theirs (outputs a request keeps are new arrays, as the contract says). The maps are a fixed
gradient (depth), stripes (segmentation) and no person (pose): the rendering and encoding after
them do their real work. It is never the proof that a model works; it shows how much host work the
node does per frame when the network is not the bottleneck.

``python -m benchmarks.standin [--standin-ms MS] [serve flags]`` serves an engines directory (its
manifest names the capabilities, graphs and bounds) with this backend in place of ONNX Runtime.

Each thread the process starts also gets its Python name as its OS name (``/proc/<pid>/task/<tid>/comm``,
15 characters: ``infer-depth``, ``AnyIO worker th``, ``uvloop_0``), as Python 3.14 does by itself, so that
``top -H`` and ``benchmarks.cores`` can tell the event loop, the capability workers and the pools apart.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import time

import numpy as np

from vision_node import cli
from vision_node.config import Config
from vision_node.contract import FRAME_INPUT

DEFAULT_MS = 2.0


class StandInBackend:
    name, device, precision = "stand-in", "none", None
    gpu_decoder = None  # JPEG frames are decoded on the CPU (infer_jpeg is never handed one)

    def __init__(self, graph, capability: str, max_batch: int, seconds: float):
        self.graph, self.capability, self.max_batch, self.seconds = graph, capability, max_batch, seconds
        self._outputs: dict[tuple[int, int, int], dict[str, np.ndarray]] = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._outputs.clear()

    def memory(self) -> dict[str, int]:
        return {"host_buffers": sum(a.nbytes for out in self._outputs.values() for a in out.values())}

    def infer(self, inputs, stop=None, owned=()) -> dict[str, np.ndarray]:
        n, h, w, _ = inputs[FRAME_INPUT].shape
        outputs = self._outputs.get((n, h, w))
        if outputs is None:
            outputs = self._outputs[(n, h, w)] = self._make(n, h, w)
        time.sleep(self.seconds)  # the network, with the GIL released
        return {k: (v.copy() if k in owned else v) for k, v in outputs.items()}

    def infer_jpeg(self, data, height, width, decoder, inputs=None, owned=()) -> None:
        return None  # no GPU decoder: the caller decodes on the CPU and calls infer

    def _make(self, n: int, h: int, w: int) -> dict[str, np.ndarray]:
        ramp = np.add.outer(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32))
        if self.capability == "depth":
            return {
                "depth": np.broadcast_to(ramp, (n, h, w)).copy(),
                "depth_min": np.zeros(n, np.float32),
                "depth_max": np.full(n, ramp.max(), np.float32),
            }
        if self.capability == "segmentation":
            return {"classes": np.broadcast_to((ramp // 32 % 150).astype(np.uint8), (n, h, w)).copy()}
        persons = next(o["shape"][1] for o in self.graph.outputs if o["name"] == "boxes")
        return {
            "boxes": np.zeros((n, persons, 4), np.float32),
            "box_scores": np.zeros((n, persons), np.float32),
            "keypoints": np.zeros((n, persons, 17, 2), np.float32),
            "keypoint_scores": np.zeros((n, persons, 17), np.float32),
        }


def open_standin(seconds: float, max_batch: int):
    """An ``open_backend`` for the node: every graph of every capability served by a StandInBackend."""

    def for_capability(served):
        return lambda graph: StandInBackend(graph, served.name, min(max_batch, served.bounds.max_batch), seconds)

    return for_capability


def name_os_threads() -> None:
    """Every thread started from now on takes its Python name as its OS name (Linux; elsewhere nothing).

    ``threading.setprofile`` runs in each new thread before its ``run``: the hook names the thread and
    removes itself at its first call, so it costs nothing after."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return
    pr_set_name = 15

    def name_this_thread(frame, event, arg):
        sys.setprofile(None)
        prctl(pr_set_name, threading.current_thread().name.encode()[:15], 0, 0, 0)

    threading.setprofile(name_this_thread)


def main(argv: list[str]) -> int:
    name_os_threads()
    seconds = DEFAULT_MS / 1000
    if "--standin-ms" in argv:
        at = argv.index("--standin-ms")
        seconds = float(argv[at + 1]) / 1000
        del argv[at : at + 2]
    args = cli._parser().parse_args(["serve", *argv])
    overrides = {k: v for k, v in vars(args).items() if k != "command" and v is not None}
    config = Config.load(os.environ, **overrides)
    return cli.serve(config, open_backend=open_standin(seconds, config.max_batch))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
