"""One typed, frozen configuration for the node; every field is a flag and an environment variable.

Precedence: command-line flag > ``VISION_NODE_<FIELD>`` environment variable > default. A bad
value fails start-up with an error that names the flag or variable and the reason.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from urllib.parse import urlsplit

from .contract import CAPABILITIES, COMBINE, names_capabilities
from .errors import StartupError

ENV_PREFIX = "VISION_NODE_"
BACKENDS = ("onnxruntime", "tensorrt", "tensorrt-rtx")
REGISTRATIONS = ("byoc", "live-runner", "both")
RUNNER_MODES = ("single-shot", "persistent")
PRICE_UNITS = ("fixed", "720p", "hour")
DEVICES = ("auto", "cpu", "cuda")
STREAM_ENCODERS = ("libx264", "h264_nvenc")
EVENT_GAP_S = 30.0  # go-livepeer's gateway ends a stream whose events channel stays silent this long


def _opt(default, help: str, **meta):
    return field(default=default, metadata={"help": help, **meta})


@dataclass(frozen=True)
class Config:
    engines: Path = _opt(Path("engines"), "directory with manifest.json and the graphs (vision-node-build --out)")
    host: str = _opt("127.0.0.1", "listen address (0.0.0.0 inside a container)")
    port: int = _opt(8000, "listen port")
    capabilities: tuple[str, ...] = _opt((), "capabilities to serve, comma-separated (default: all in the manifest)")
    backend: str = _opt(
        "onnxruntime",
        "inference backend: tensorrt needs the trt extra, a GPU and engines built for it on this GPU; tensorrt-rtx "
        "(RTX 30/40/50 cards) needs the trt-rtx extra and engines from vision-node-build --tensorrt-rtx",
        choices=BACKENDS,
    )
    device: str = _opt("auto", "ONNX Runtime device: auto takes CUDA when onnxruntime-gpu sees a GPU", choices=DEVICES)
    threads: int = _opt(0, "ONNX Runtime intra-op threads per session (0: ONNX Runtime's default)")
    onnxruntime_spin: bool = _opt(
        False,
        "ONNX Runtime's idle threads spin instead of sleeping: a frame alone may start sooner, while the spinning "
        "takes the cores that decoding and encoding need (4 streams at 512x512 on 2 cores: 0.90 of their frames "
        "with it, 0.975 without)",
    )
    keep_arena_pixels: int = _opt(
        1920 * 1080,  # every frame of the default bounds: they keep ~10-20 MiB more than 720p ones
        "ONNX Runtime: frames of up to this many pixels (times the batch) keep the CPU memory arena between frames; "
        "a larger one gives its memory back when it ends (0: every frame does)",
    )
    max_body_bytes: int = _opt(32 << 20, "largest request body accepted (413 above it)")
    queue_size: int = _opt(4, "requests that may wait per capability behind the running one (503 above it)")
    request_timeout_s: float = _opt(10.0, "per-request deadline from arrival to result (504 after it)")
    max_batch: int = _opt(
        1, "run up to this many waiting frames of the same size as one batch (1: one frame at a time)"
    )
    batch_window_s: float = _opt(0.0, "with --max-batch > 1, wait this long for more frames to fill a batch")
    receive_timeout_s: float = _opt(
        10.0, "a request's head and body must arrive within this many seconds of its first byte (408 after it)"
    )
    max_header_bytes: int = _opt(16384, "largest request line + headers accepted (431 above it)")
    hang_timeout_s: float = _opt(
        60.0, "an inference still running after this many seconds is a hung device: the node exits for a restart"
    )
    max_consecutive_failures: int = _opt(
        3, "backend failures in a row on one capability that count as a broken device (the node exits)"
    )
    drain_delay_s: float = _opt(
        0.0, "on SIGTERM, keep serving this long after unregistering (/ready is 503) before closing the listener"
    )
    shutdown_grace_s: float = _opt(30.0, "on SIGTERM, how long requests in flight may take to finish")
    png_compression: int = _opt(
        1, "PNG outputs' compression, 0-9: 0 stores, 1 is ISA-L's fastest (smaller than zlib's 1), 2-9 zlib's levels"
    )
    gpu_decode: bool = _opt(
        False,
        "decode JPEG frames on the GPU (nvImageCodec, the gpu-decode extra) straight into the engine's input buffer; "
        "TensorRT backends, one capability per request (combinations decode once on the CPU)",
    )
    # Live streams (docs/livepeer.md, "Live video"): trickle channels of H.264 in MPEG-TS, in and out.
    stream_capacity: int = _opt(
        4, "live streams each capability takes at once (/live/<capability>/stream/start; 503 past it; 0: no streams)"
    )
    stream_encoder: str = _opt(
        "libx264",
        "H.264 encoder of the streams' maps: libx264 (CPU) or h264_nvenc (an NVIDIA GPU's, where FFmpeg has it)",
        choices=STREAM_ENCODERS,
    )
    stream_quality: int = _opt(
        23,
        "the streams' H.264 quality: x264's CRF (NVENC's CQ), 0-51, lower is closer to /infer's maps and costs "
        "more CPU and bytes (23: x264's default, what pytrickle sends)",
    )
    stream_status_interval_s: float = _opt(
        5.0, "a status event on each stream's events channel this often (go-livepeer ends a stream after 30 s of none)"
    )
    stream_idle_timeout_s: float = _opt(30.0, "a stream whose input brings no frame for this long ends, with an error")
    stream_hosts: tuple[str, ...] = _opt(
        (),
        "hosts (name or name:port) a stream's channels may be on; empty: the host of --orchestrator-url when one is "
        "set, else any (then keep the node's port private or set --token: a stream start makes the node connect)",
    )
    log_level: str = _opt("info", "log level", choices=("debug", "info", "warning", "error"))
    access_log: bool = _opt(False, "log every request (off: one line per frame is noise at video rates)")
    # Livepeer BYOC registration (see docs/livepeer.md, "Registering with a Livepeer orchestrator").
    orchestrator_url: str = _opt("", "orchestrator to register every capability with once warm (empty: none)")
    orchestrator_secret: str = _opt("", "the orchestrator's secret, sent raw in Authorization as go-livepeer expects")
    node_url: str = _opt("", "URL at which the orchestrator reaches this node (needed to register)")
    capability_names: tuple[str, ...] = _opt((), "CAP=NAME,...: register a capability under another name")
    combinations: tuple[str, ...] = _opt(
        (), "also register these as capabilities of their own, e.g. depth+pose (served at /infer/depth+pose)"
    )
    capacity: int = _opt(
        0,
        "concurrent requests (BYOC) or sessions (live runners) advertised per capability; 0: what the node accepts "
        "before answering 503, 1 running + --queue-size waiting",
    )
    price_per_unit: int = _opt(0, "price per second of work, in --currency units")
    price_scaling: int = _opt(1, "price divisor (price = price_per_unit / price_scaling)")
    currency: str = _opt("wei", "currency of the price: wei or eth (or empty)")
    token: str = _opt("", "Bearer token /infer requires (403 otherwise); sent to the orchestrator at registration")
    register_interval_s: float = _opt(30.0, "BYOC: re-register this often: the orchestrator forgets on restart")
    # Livepeer live runners (docs/livepeer.md, "Registering as a Livepeer live runner"): the successor of BYOC.
    register_as: str = _opt(
        "byoc",
        "how to register with --orchestrator-url: byoc (capability/register), live-runner (runners/heartbeat) or both",
        choices=REGISTRATIONS,
    )
    runner_apps: tuple[str, ...] = _opt((), "CAP=APP,...: a live runner's app name (default: vision/<capability>)")
    runner_mode: str = _opt(
        "single-shot",
        "live runner mode: single-shot (a slot per request, like /infer) or persistent (a slot per session)",
        choices=RUNNER_MODES,
    )
    runner_price: str = _opt(
        "", "live runner price in USD per --runner-price-unit, a positive decimal (empty: none, off-chain only)"
    )
    runner_price_unit: str = _opt(
        "fixed", "what --runner-price buys: fixed (a request or session), 720p or hour", choices=PRICE_UNITS
    )
    runner_version: str = _opt("", "version advertised by the live runners (default: the node's version)")
    runner_metadata: str = _opt("", "public metadata of the live runners, at most 1024 bytes (never a secret)")
    gpu_name: str = _opt("", "GPU advertised by the live runners (default: the TensorRT backend's GPU, if any)")
    gpu_vram_mb: int = _opt(0, "its memory in MiB (default: the TensorRT backend's GPU's)")

    def __post_init__(self):
        problems = self._serving_problems() + self._livepeer_problems()
        if problems:
            raise StartupError("invalid configuration: " + "; ".join(problems))

    def _serving_problems(self) -> list[str]:
        """What is wrong with the settings of serving itself: limits, timeouts, batching, backend, names."""
        problems = []
        if not 0 < self.port < 65536:
            problems.append(f"port: {self.port} is not a TCP port")
        for name in ("threads", "queue_size", "keep_arena_pixels"):
            if getattr(self, name) < 0:
                problems.append(f"{name}: must be >= 0, got {getattr(self, name)}")
        if self.max_body_bytes < 1024:
            problems.append(f"max_body_bytes: {self.max_body_bytes} is too small to hold a frame")
        if self.request_timeout_s <= 0:
            problems.append(f"request_timeout_s: must be > 0, got {self.request_timeout_s}")
        for name in ("receive_timeout_s", "hang_timeout_s", "shutdown_grace_s"):
            if getattr(self, name) <= 0:
                problems.append(f"{name}: must be > 0, got {getattr(self, name)}")
        if self.max_batch < 1:
            problems.append(f"max_batch: must be >= 1, got {self.max_batch}")
        if self.batch_window_s < 0:
            problems.append(f"batch_window_s: must be >= 0, got {self.batch_window_s}")
        if self.drain_delay_s < 0:
            problems.append(f"drain_delay_s: must be >= 0, got {self.drain_delay_s}")
        if self.max_header_bytes < 1024:
            problems.append(f"max_header_bytes: {self.max_header_bytes} is too small for ordinary headers")
        if self.max_consecutive_failures < 1:
            problems.append(f"max_consecutive_failures: must be >= 1, got {self.max_consecutive_failures}")
        if self.stream_capacity < 0:
            problems.append(f"stream_capacity: must be >= 0, got {self.stream_capacity}")
        if not 0 < self.stream_status_interval_s < EVENT_GAP_S / 2:
            problems.append(
                f"stream_status_interval_s: must be > 0 and < {EVENT_GAP_S / 2:g} (go-livepeer ends a "
                f"stream after {EVENT_GAP_S:g} s without an event), got {self.stream_status_interval_s}"
            )
        if not 0 <= self.stream_quality <= 51:
            problems.append(f"stream_quality: must be 0-51 (x264's CRF), got {self.stream_quality}")
        if self.stream_idle_timeout_s <= 0:
            problems.append(f"stream_idle_timeout_s: must be > 0, got {self.stream_idle_timeout_s}")
        if self.gpu_decode and self.backend == "onnxruntime":
            problems.append("gpu_decode: needs a TensorRT backend (--backend tensorrt or tensorrt-rtx)")
        if not 0 <= self.png_compression <= 9:
            problems.append(f"png_compression: must be 0-9, got {self.png_compression}")
        bad_combinations = [c for c in self.combinations if COMBINE not in c or not names_capabilities(c)]
        if bad_combinations:
            problems.append(
                f"combinations: expected two or more of {', '.join(CAPABILITIES)} joined by +: {bad_combinations}"
            )
        unknown = [c for c in self.capabilities if c not in CAPABILITIES]
        if unknown:
            problems.append(f"capabilities: unknown {', '.join(unknown)}; known: {', '.join(CAPABILITIES)}")
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                problems.append(f"{f.name}: {getattr(self, f.name)!r} is not one of {', '.join(choices)}")
        return problems

    def _livepeer_problems(self) -> list[str]:
        """What is wrong with the registration settings (BYOC, live runners)."""
        problems = []
        if self.orchestrator_url and not (self.node_url and self.orchestrator_secret):
            problems.append("orchestrator_url: registering also needs node_url and orchestrator_secret")
        if self.price_scaling < 1:
            problems.append(f"price_scaling: must be >= 1, got {self.price_scaling}")
        if self.capacity < 0:
            problems.append(f"capacity: must be >= 0 (0: derived from --queue-size), got {self.capacity}")
        if self.register_interval_s <= 0:
            problems.append(f"register_interval_s: must be > 0, got {self.register_interval_s}")
        if self.runner_price:
            try:
                if not Decimal(self.runner_price) > 0:
                    raise InvalidOperation
            except InvalidOperation:
                problems.append(f"runner_price: must be a positive decimal, got {self.runner_price!r}")
        if len(self.runner_metadata.encode()) > 1024:
            problems.append(f"runner_metadata: {len(self.runner_metadata.encode())} bytes, go-livepeer takes 1024")
        if self.gpu_vram_mb < 0:
            problems.append(f"gpu_vram_mb: must be >= 0, got {self.gpu_vram_mb}")
        for name, value in (("runner_apps", "APP"), ("capability_names", "NAME")):
            bad_pairs = [p for p in getattr(self, name) if p.partition("=")[0] not in CAPABILITIES or "=" not in p[:-1]]
            if bad_pairs:
                problems.append(f"{name}: expected CAP={value} with CAP one of {', '.join(CAPABILITIES)}: {bad_pairs}")
        return problems

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, **overrides) -> Config:
        """Defaults, then ``VISION_NODE_*`` variables, then ``overrides`` (already typed or strings)."""
        values = {}
        for f in dataclasses.fields(cls):
            env_key = ENV_PREFIX + f.name.upper()
            if overrides.get(f.name) is not None:
                raw, where = overrides[f.name], f"--{f.name.replace('_', '-')}"
            elif environ and env_key in environ:
                raw, where = environ[env_key], env_key
            else:
                continue
            try:
                values[f.name] = _convert(raw, f.default)
            except ValueError:
                raise StartupError(f"{where}: cannot read {raw!r} as {type(f.default).__name__}") from None
        return cls(**values)

    @property
    def accepted_per_capability(self) -> int:
        """Requests one capability takes at once before answering 503: the running one and the queue."""
        return self.queue_size + 1

    @property
    def runner_capacity(self) -> int:
        """A live runner's capacity: in persistent mode a session is a stream, so the streams a capability takes."""
        if not self.capacity and self.runner_mode == "persistent" and self.stream_capacity:
            return self.stream_capacity
        return self.advertised_capacity

    @property
    def advertised_capacity(self) -> int:
        """The capacity told to an orchestrator: the configured one, else what the node really accepts."""
        return self.capacity or self.accepted_per_capability

    def registration_warnings(self) -> list[str]:
        """Settings that work but mislead an orchestrator or its clients."""
        warnings = []
        if self.orchestrator_url and self.capacity > self.accepted_per_capability:
            warnings.append(
                f"capacity {self.capacity} is more than a capability accepts before answering 503 "
                f"({self.accepted_per_capability}: 1 running + queue size {self.queue_size}): the orchestrator will "
                "send requests the node refuses; raise --queue-size or lower --capacity (0 derives it)"
            )
        if self.registers_live_runners and self.token:
            warnings.append(
                "--token with live runners: go-livepeer's proxy forwards the client's headers and adds no token, so "
                "clients must send Authorization: Bearer <token> themselves (keep the runner URL private instead)"
            )
        return warnings

    def registered_name(self, capability: str) -> str:
        return _pairs(self.capability_names).get(capability, capability)

    def runner_app(self, capability: str) -> str:
        return _pairs(self.runner_apps).get(capability, f"vision/{capability}")

    @property
    def trickle_hosts(self) -> frozenset[str]:
        """Where streams' channels may be (lower-case host or host:port); empty: anywhere."""
        if self.stream_hosts:
            return frozenset(h.lower() for h in self.stream_hosts)
        host = urlsplit(self.orchestrator_url).hostname if self.orchestrator_url else None
        return frozenset({host.lower()}) if host else frozenset()

    @property
    def registers_byoc(self) -> bool:
        return bool(self.orchestrator_url) and self.register_as in ("byoc", "both")

    @property
    def registers_live_runners(self) -> bool:
        return bool(self.orchestrator_url) and self.register_as in ("live-runner", "both")


def _pairs(values: tuple[str, ...]) -> dict[str, str]:
    """``("depth=vision-depth", ...)`` as a dict (validated in ``__post_init__``)."""
    return dict(v.split("=", 1) for v in values)


def _convert(raw, default):
    if not isinstance(raw, str):
        return tuple(raw) if isinstance(default, tuple) else raw
    if isinstance(default, tuple):
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if isinstance(default, bool):
        if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise ValueError(raw)
        return raw.lower() in ("1", "true", "yes")
    return type(default)(raw)
