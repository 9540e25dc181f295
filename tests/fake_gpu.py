"""FAKES of TensorRT and pycuda, for CPU tests of the TensorRT backend's own logic.

They prove our call sequence, buffer sizes, copies of the valid region and the shared scratch
handling, NOT TensorRT: the fake "engine" is the ONNX graph run by ONNX Runtime on "device"
memory that is host numpy arrays. TensorRT itself is proven by ``python -m vision_node selftest`` on a GPU.
"""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort


class FakeCuda:
    """The slice of ``pycuda.driver`` the backend uses; every call is logged in ``calls``."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.memory: dict[int, np.ndarray] = {}
        self._addresses = itertools.count(0x1000, 0x1000)
        cuda = self

        class Allocation:
            def __init__(self, nbytes):
                self.address, self.nbytes = next(cuda._addresses), nbytes
                cuda.memory[self.address] = np.zeros(nbytes, np.uint8)

            def __int__(self):
                return self.address

            def free(self):
                cuda.calls.append(("free", self.address))
                cuda.memory.pop(self.address, None)

        class Stream:
            handle = 0xABC

            def synchronize(self):
                cuda.calls.append(("synchronize",))

        class Event:
            def record(self, stream):
                pass

            def time_since(self, other):
                return 0.0

        class Device:
            def __init__(self, index):
                pass

            def name(self):
                return "FAKE GPU"

            def compute_capability(self):
                return (9, 0)

            def total_memory(self):
                return 80 << 30

            def retain_primary_context(self):
                return SimpleNamespace(push=lambda: cuda.calls.append(("push",)))

        self.Allocation, self.Stream, self.Event, self.Device = Allocation, Stream, Event, Device
        self.Context = SimpleNamespace(pop=lambda: cuda.calls.append(("pop",)))

    def mem_alloc(self, nbytes):
        self.calls.append(("mem_alloc", nbytes))
        return self.Allocation(nbytes)

    def pagelocked_empty(self, count, dtype):
        self.calls.append(("pagelocked_empty", count))
        return np.empty(count, dtype)

    def memcpy_htod_async(self, dest, src, stream):
        self.calls.append(("htod", int(dest), src.nbytes))
        self.memory[int(dest)][: src.nbytes] = np.frombuffer(np.ascontiguousarray(src).tobytes(), np.uint8)

    def memcpy_dtoh_async(self, dest, src, stream):
        self.calls.append(("dtoh", int(src), dest.nbytes))
        dest.reshape(-1).view(np.uint8)[:] = self.memory[int(src)][: dest.nbytes]


class FakeTensorRT:
    """The slice of the ``tensorrt`` module the backend uses. A "plan" file here is an ONNX graph."""

    __version__ = "0.0-fake"

    Logger = SimpleNamespace(WARNING=2)
    TensorIOMode = SimpleNamespace(INPUT="input", OUTPUT="output")
    ExecutionContextAllocationStrategy = SimpleNamespace(USER_MANAGED="user_managed")
    # TensorRT for RTX's engine check (Runtime.get_engine_validity): an enum and a bit mask of reasons.
    EngineValidity = SimpleNamespace(
        VALID=SimpleNamespace(name="VALID"),
        SUBOPTIMAL=SimpleNamespace(name="SUBOPTIMAL"),
        INVALID=SimpleNamespace(name="INVALID"),
    )
    EngineInvalidityDiagnostics = SimpleNamespace(
        __members__={
            "VERSION_MISMATCH": SimpleNamespace(name="VERSION_MISMATCH", value=1),
            "UNSUPPORTED_CC": SimpleNamespace(name="UNSUPPORTED_CC", value=2),
        }
    )

    def __init__(self, cuda: FakeCuda, scratch_need: int = 1 << 20, fail_execute: bool = False, validity=("VALID", 0)):
        self.cuda, self.scratch_need, self.fail_execute = cuda, scratch_need, fail_execute
        self.validity = validity  # what get_engine_validity answers (TensorRT for RTX)
        self.runtime_cache_blobs: list[bytes] = []  # what each FAKE runtime cache was loaded from
        self.Logger = _FakeLogger
        self.Runtime = lambda logger: _FakeRuntime(self)

    @staticmethod
    def nptype(dtype):
        return dtype


class _FakeLogger:
    WARNING = 2

    def __init__(self, severity):
        pass


class _FakeRuntime:
    def __init__(self, fake: FakeTensorRT):
        self.fake = fake

    def get_engine_validity(self, plan: bytes):
        name, diagnostics = self.fake.validity
        return getattr(self.fake.EngineValidity, name), diagnostics

    def deserialize_cuda_engine(self, plan: bytes):
        return _FakeEngine(self.fake, plan) if plan.startswith(b"\x08") else None  # ONNX protobuf: field 1 first


class _FakeEngine:
    """FAKE engine: the ONNX graph the "plan" is, run by ONNX Runtime."""

    def __init__(self, fake: FakeTensorRT, plan: bytes):
        self.fake = fake
        self.session = ort.InferenceSession(plan, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]  # frames, then any parameters
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.names = self.inputs + self.output_names
        self.num_io_tensors = len(self.names)
        self.device_memory_size_v2 = fake.scratch_need

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return self.fake.TensorIOMode.INPUT if name in self.inputs else self.fake.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        if name == "frames":
            return np.uint8
        out = next(o for o in self.session.get_inputs() + self.session.get_outputs() if o.name == name)
        return {"tensor(float)": np.float32, "tensor(uint8)": np.uint8}[out.type]

    def create_execution_context(self, strategy_or_config):
        config = strategy_or_config
        if isinstance(config, _FakeRuntimeConfig):  # TensorRT for RTX: the strategy travels in a config
            self.fake.cuda.calls.append(("create_execution_context", config.strategy, config.cache))
        else:
            self.fake.cuda.calls.append(("create_execution_context", config))
        return _FakeContext(self.fake, self)

    def create_runtime_config(self):
        return _FakeRuntimeConfig(self.fake)


class _FakeRuntimeCache:
    """FAKE just-in-time kernel cache: its bytes say how many engines used it."""

    def __init__(self, fake: FakeTensorRT):
        self.fake, self.used = fake, 0

    def deserialize(self, blob: bytes) -> bool:
        self.fake.runtime_cache_blobs.append(bytes(blob))
        return blob.startswith(b"fake-runtime-cache")

    def serialize(self) -> bytes:
        return b"fake-runtime-cache used by %d" % self.used


class _FakeRuntimeConfig:
    def __init__(self, fake: FakeTensorRT):
        self.fake = fake
        self.strategy = self.cache = None

    def set_execution_context_allocation_strategy(self, strategy):
        self.strategy = strategy

    def create_runtime_cache(self):
        return _FakeRuntimeCache(self.fake)

    def set_runtime_cache(self, cache):
        cache.used += 1
        self.cache = cache
        return True


class _FakeContext:
    """FAKE execution context: ``execute_async_v3`` runs the graph on the frames at the input's "device" address
    and writes each output at its own."""

    def __init__(self, fake: FakeTensorRT, engine: _FakeEngine):
        self.fake = fake
        self.engine, self.addresses, self.shape, self.device_memory_at = engine, {}, None, None
        self._shapes = {}

    def set_input_shape(self, name, shape):
        if name != "frames":  # a per-frame parameter: [N], set after the frames
            assert tuple(shape) == self.shape[:1], f"{name} {shape} for frames {self.shape}"
            return True
        self.fake.cuda.calls.append(("set_input_shape", tuple(shape)))
        self.shape = tuple(shape)
        if self.shape not in self._shapes:  # TensorRT infers these; the fake asks ONNX Runtime
            outs = self.engine.session.run(None, self.feeds(np.zeros(self.shape, np.uint8)))
            self._shapes[self.shape] = {n: o.shape for n, o in zip(self.engine.output_names, outs)}
        return True

    def feeds(self, frames):
        """The frames and, for each parameter, the [N] float32 values at its address."""
        n, feeds = frames.shape[0], {"frames": frames}
        for name in self.engine.inputs[1:]:
            address = self.addresses.get(name)
            memory = self.fake.cuda.memory[address] if address is not None else np.zeros(4 * n, np.uint8)
            feeds[name] = memory[: 4 * n].view(np.float32).copy()
        return feeds

    def get_tensor_shape(self, name):
        if name in self.engine.inputs:
            return self.shape if name == "frames" else self.shape[:1]
        return self._shapes[self.shape][name]

    def set_tensor_address(self, name, address):
        self.addresses[name] = address
        return True

    def set_device_memory(self, address, size):
        self.fake.cuda.calls.append(("set_device_memory", address, size))
        self.device_memory_at = address

    def execute_async_v3(self, stream_handle):
        fake = self.fake
        fake.cuda.calls.append(("execute_async_v3", stream_handle))
        if fake.fail_execute:
            return False
        assert self.device_memory_at is not None, "executed without scratch memory"
        count = int(np.prod(self.shape))
        frames = fake.cuda.memory[self.addresses["frames"]][:count].reshape(self.shape)
        outs = self.engine.session.run(None, self.feeds(frames))
        for name, out in zip(self.engine.output_names, outs):
            raw = np.ascontiguousarray(out).view(np.uint8).reshape(-1)
            fake.cuda.memory[self.addresses[name]][: raw.size] = raw
        return True


def engines_with_fake_plans(source, target, runtime: str = "tensorrt") -> None:
    """Copy an engines directory and list, for each graph, a FAKE TensorRT (or TensorRT for RTX) "plan"."""
    import shutil
    from pathlib import Path

    from vision_node import manifest
    from vision_node.builder import engine_files
    from vision_node.runtime.flavours import flavour

    shutil.copytree(source, target)
    data = manifest.read(target)
    gpu = {"name": "FAKE GPU", "compute_capability": "9.0"}
    for entry in data.capabilities.values():
        for graph in entry.graphs:
            built_from = graph.fp16 or graph  # as the build does: the fp16 graph where there is one
            source = built_from.tensorrt_onnx  # the file the build compiles
            options = {"max_batch": 1, "precision": built_from.precision}
            facts = engine_files.wanted(source.sha256, flavour(runtime), FakeTensorRT.__version__, options, gpu)
            plan = engine_files.engine_path(Path(target), Path(built_from.path).stem, facts)
            shutil.copy(Path(target) / source.path, plan)  # the fake engine runs the ONNX graph
            graph.tensorrt = [
                manifest.EngineRecord(
                    **vars(facts), plan=plan.name, sha256=manifest.sha256(plan), bytes=plan.stat().st_size
                )
            ]
    manifest.write(Path(target), data.capabilities)


def patch_in_fake_gpu(monkeypatch) -> tuple[FakeTensorRT, list]:
    """FAKE TensorRT (any flavour) and pycuda where the node loads them: (the fake, the flavours loaded)."""
    from vision_node.runtime import tensorrt as trt_backend

    trt, loaded = FakeTensorRT(FakeCuda()), []
    monkeypatch.setattr(trt_backend, "load_tensorrt", lambda flavour=None: loaded.append(flavour) or trt)
    monkeypatch.setattr(trt_backend, "load_pycuda", lambda: (trt.cuda, trt.cuda.Device(0).retain_primary_context()))
    return trt, loaded


def fp16_reference(engines, capability: str):
    """ONNX Runtime on the file ``capability``'s fp16 engine is built from: what the FAKE engine computes."""
    from vision_node import manifest
    from vision_node.runtime.onnxruntime import OnnxRuntimeBackend
    from vision_node.serving.engines import load

    served = load(engines, (capability,))[capability]
    graph = served.graphs[0]
    fp16 = manifest.read(engines).capabilities[capability].graphs[0].fp16
    assert fp16 is not None
    return OnnxRuntimeBackend(graph.path.parent / fp16.tensorrt_onnx.path, graph.outputs, served.bounds).__enter__()


class FakeNvImgCodec:
    """FAKE of the slice of ``nvidia.nvimgcodec`` that ``vision_node.runtime.gpu_decode`` uses: NOT nvJPEG.

    It decodes with libjpeg-turbo (simplejpeg) on the CPU and writes the pixels into FakeCuda's "device"
    memory at the address the caller's ``__cuda_array_interface__`` names, so what is proven is the node's
    side: the buffer it hands over, the shape it expects, the fallback when the decoder says no.
    """

    class ColorSpec:
        SRGB = "srgb"

    def __init__(self, cuda: FakeCuda, refuse: bool = False, fail_to_open: bool = False):
        self.cuda, self.refuse, self.fail_to_open = cuda, refuse, fail_to_open
        self.decoded: list[tuple[int, tuple[int, int]]] = []  # (address, (h, w)) of every decode
        codec = self

        class Decoder:
            def __init__(self, device_id=0, options=""):
                if codec.fail_to_open:
                    raise RuntimeError("Could not create decoder")  # what nvImageCodec says without a driver

            def decode(self, stream, image=None, params=None, cuda_stream=0):
                import simplejpeg

                if codec.refuse:
                    return None
                pixels = simplejpeg.decode_jpeg(stream.data, colorspace="RGB")
                interface = image.interface
                address, shape = interface["data"][0], interface["shape"]
                assert pixels.shape == tuple(shape), (pixels.shape, shape)
                codec.cuda.memory[address][: pixels.nbytes] = pixels.reshape(-1)
                codec.decoded.append((address, tuple(shape[:2])))
                return SimpleNamespace(shape=pixels.shape)

        self.Decoder = Decoder

    @staticmethod
    def DecodeParams(**kwargs):  # nvImageCodec's name
        return SimpleNamespace(**kwargs)

    @staticmethod
    def CodeStream(data: bytes):
        return SimpleNamespace(data=data)

    @staticmethod
    def as_image(source, cuda_stream=0):
        return SimpleNamespace(interface=source.__cuda_array_interface__)
