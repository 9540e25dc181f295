"""H.264 in MPEG-TS in, H.264 in MPEG-TS out (PyAV, FFmpeg's libraries), one trickle segment at a time.

Decoding: each input segment is demuxed on its own (a segment is a GOP that starts with its PAT/PMT
and a keyframe), while one H.264 decoder lives for the whole stream. Two FFmpeg settings keep frames
from waiting in the demuxer: no probing (the PMT names the codec; the decoder reads the SPS), and no
parser (``fflags=+noparse``): a PES is handed over as the frame it carries, where the parser would
hold every frame until the next one begins. A PES that declares its length is then handed over as
soon as its last byte arrives; one that does not (FFmpeg's default for video) when the next begins.

Encoding: one encoder per stream (libx264 ``ultrafast``/``zerolatency``: no B-frames, no lookahead,
one frame in, one packet out; or NVENC), and one MPEG-TS muxer per output segment, so that every
segment starts with PAT/PMT and an IDR frame and decodes on its own. The muxer flushes after every
frame and writes each video PES with its length, so a reader gets a frame the moment it is written.
Each input frame's pts is the map's pts: the two streams pair frame by frame.
"""

from __future__ import annotations

import functools
import queue
import time
from collections.abc import Callable, Iterator
from fractions import Fraction

import av
import numpy as np
from av.container import OutputContainer
from av.video.frame import PictureType

from ..capabilities.base import Picture

PTS_TIME_BASE = Fraction(1, 90000)  # MPEG-TS's clock
_INPUT_OPTIONS = {"probesize": "32", "analyzeduration": "0", "fpsprobesize": "0", "fflags": "+noparse+nofillin"}
_OUTPUT_OPTIONS = {"flush_packets": "1", "omit_video_pes_length": "0"}
# What each encoder needs to add no latency and to start a segment with an IDR frame when asked.
ENCODER_OPTIONS = {
    "libx264": {"preset": "ultrafast", "tune": "zerolatency", "forced-idr": "1"},
    "h264_nvenc": {"preset": "p1", "tune": "ull", "zerolatency": "1", "forced-idr": "1", "rc": "vbr"},
}
QUALITY_OPTION = {"libx264": "crf", "h264_nvenc": "cq"}


class InputStopped(Exception):
    """The segment's bytes will not come (the stream stops)."""


class VideoError(Exception):
    """The input is not what a stream takes (not H.264, not video): the stream cannot go on."""


class Feed:
    """One segment's bytes, handed in by the event loop as they arrive and read by the decoding thread.

    A file-like object for PyAV: ``read`` blocks until bytes come, returns b"" at the segment's end."""

    def __init__(self):
        self._chunks: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._left = b""
        self._ended = False
        self.stopped = False

    def put(self, data: bytes) -> None:
        self._chunks.put(data)

    def end(self) -> None:
        self._chunks.put(None)

    def stop(self) -> None:
        """Wake the reader for good: it raises InputStopped."""
        self.stopped = True
        self._chunks.put(None)

    def read(self, n: int) -> bytes:
        while not self._left:
            if self._ended:
                return b""
            chunk = self._chunks.get()
            if self.stopped:
                self._chunks.put(None)  # FFmpeg may read again after the error: it must not block then either
                raise InputStopped
            if chunk is None:
                self._ended = True
                return b""
            self._left = chunk
        out, self._left = self._left[:n], self._left[n:]
        return out


class Decoder:
    """Decodes a stream's segments; the H.264 decoder (and so its reference frames) outlives each segment."""

    def __init__(self):
        codec = av.CodecContext.create("h264", "r")
        assert isinstance(codec, av.VideoCodecContext)  # a video codec's context
        codec.thread_count = 1  # frame threads would each hold a frame back
        self._codec: av.VideoCodecContext | None = codec

    def frames(self, feed: Feed) -> Iterator[tuple[av.VideoFrame, float]]:
        """(frame, time.monotonic() its packet left the demuxer) for every frame of one segment as it is decoded.

        VideoError if the segment carries no H.264 video; av.FFmpegError for bytes FFmpeg cannot read (the
        caller counts them and goes on)."""
        decoder = self._codec
        assert decoder is not None, "the decoder is closed"
        with av.open(feed, "r", format="mpegts", options=_INPUT_OPTIONS) as container:
            if not container.streams.video:
                raise VideoError("the segment has no video stream")
            stream = container.streams.video[0]
            codec = stream.codec_context.name if stream.codec_context is not None else "unknown"
            if codec != "h264":
                raise VideoError(f"the input video is {codec}; this node decodes H.264")
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                demuxed = time.monotonic()
                for frame in decoder.decode(packet):
                    if frame.pts is None:
                        frame.pts = packet.pts
                    yield frame, demuxed

    def close(self) -> None:
        self._codec = None


def frame_pts(frame: av.VideoFrame) -> int:
    """The frame's pts on MPEG-TS's 90 kHz clock (what goes out with its map)."""
    if frame.time_base in (None, PTS_TIME_BASE):
        return int(frame.pts)
    return int(round(frame.pts * frame.time_base / PTS_TIME_BASE))


def to_rgb(frame: av.VideoFrame, height: int, width: int) -> np.ndarray:
    """The frame as RGB uint8 [height, width, 3]: as it is, scaled, or scaled to cover and cropped at the centre
    (what Livepeer's decoders do for a stream's ``width``/``height``)."""
    if (frame.height, frame.width) == (height, width):
        return frame.to_ndarray(format="rgb24")
    scale = max(height / frame.height, width / frame.width)
    scaled_h, scaled_w = max(height, round(frame.height * scale)), max(width, round(frame.width * scale))
    pixels = frame.reformat(width=scaled_w, height=scaled_h, format="rgb24").to_ndarray()
    top, left = (scaled_h - height) // 2, (scaled_w - width) // 2
    return np.ascontiguousarray(pixels[top : top + height, left : left + width])


def video_frame(picture: Picture) -> av.VideoFrame:
    """A map as a yuv420p frame (swscale converts grey and palette indices as they are: no RGB copy first)."""
    if picture.format == "pal8":
        assert picture.palette is not None  # a pal8 picture carries its palette
        pair = (picture.pixels, _argb(picture.palette))
        # PyAV takes pal8 as this (indices, ARGB palette) pair (its docstring); its stubs allow one array only
        frame = av.VideoFrame.from_ndarray(pair, format="pal8")  # type: ignore[arg-type]
    else:
        frame = av.VideoFrame.from_ndarray(picture.pixels, format=picture.format)
    return frame.reformat(format="yuv420p")


@functools.cache
def _argb_of(key: bytes) -> np.ndarray:
    rgb = np.frombuffer(key, np.uint8).reshape(-1, 3)
    palette = np.zeros((256, 4), np.uint8)
    palette[:, 0] = 255  # opaque
    palette[: len(rgb), 1:] = rgb
    return palette


def _argb(rgb: np.ndarray) -> np.ndarray:
    """[N, 3] RGB colours as PyAV's pal8 palette: [256, 4] ARGB rows (a capability has one or two palettes)."""
    return _argb_of(np.ascontiguousarray(rgb, np.uint8).tobytes())


class Encoder:
    """One stream's maps as H.264 in MPEG-TS segments: ``write(picture, pts, new_segment)``.

    ``on_segment()`` is called when a segment begins and ``on_bytes(data)`` with each frame's bytes as the
    muxer writes them, both on the calling thread."""

    def __init__(
        self,
        width: int,
        height: int,
        codec: str,
        on_segment: Callable[[], None],
        on_bytes: Callable[[bytes], None],
        quality: int = 23,
    ):
        self.width, self.height = width, height
        context = av.CodecContext.create(codec, "w")
        assert isinstance(context, av.VideoCodecContext)  # a video encoder's context
        context.width, context.height, context.pix_fmt = width, height, "yuv420p"
        context.time_base = PTS_TIME_BASE
        context.thread_count = 1  # many streams share the cores; one thread each keeps their count fixed
        context.gop_size = 1 << 20  # keyframes where segments start, and only there
        context.options = {**ENCODER_OPTIONS.get(codec, {}), QUALITY_OPTION.get(codec, "crf"): str(quality)}
        context.open()
        self.codec: av.VideoCodecContext | None = context
        self._on_segment, self._on_bytes = on_segment, on_bytes
        self._container: OutputContainer | None = None
        self._stream: av.VideoStream | None = None
        self._last_pts: int | None = None
        self._count = 0  # the encoder's own clock: input pts may jump back (a restarted source)

    def write(self, picture: Picture, pts: int, new_segment: bool) -> None:
        if self._last_pts is not None and pts <= self._last_pts:
            new_segment = True  # a muxer takes only increasing timestamps: a new segment starts a new clock
        frame = video_frame(picture)
        frame.pts, frame.time_base = self._count, PTS_TIME_BASE
        self._count += 1
        if new_segment or self._container is None:
            frame.pict_type = PictureType.I
            self._start_segment()
        codec, container, stream = self.codec, self._container, self._stream
        assert codec is not None and container is not None and stream is not None  # open, in a segment
        for packet in codec.encode(frame):
            packet.pts = packet.dts = pts  # zerolatency: each frame's packet comes out at once, in order
            packet.stream = stream
            container.mux(packet)
        self._last_pts = pts

    def _start_segment(self) -> None:
        self._end_segment()
        self._on_segment()
        self._container = av.open(_Sink(self._on_bytes), "w", format="mpegts", options=_OUTPUT_OPTIONS)
        self._stream = stream = self._container.add_stream("h264", rate=24)
        stream.width, stream.height, stream.time_base = self.width, self.height, PTS_TIME_BASE
        self._last_pts = None

    def _end_segment(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def close(self) -> None:
        self._end_segment()
        self.codec = None


class _Sink:
    """A write-only file for the muxer that hands every write on."""

    def __init__(self, on_bytes: Callable[[bytes], None]):
        self._on_bytes = on_bytes

    def write(self, data) -> int:
        self._on_bytes(bytes(data))
        return len(data)


def encoder_works(codec: str) -> str | None:
    """None if ``codec`` opens here (NVENC needs a GPU and its driver), else why not."""
    if codec not in av.codecs_available:
        return f"{codec}: this FFmpeg (PyAV {av.__version__}) has no such encoder"
    try:
        Encoder(64, 64, codec, lambda: None, lambda data: None).close()
    except av.FFmpegError as err:
        return f"{codec}: cannot open it here: {err}"
    return None
