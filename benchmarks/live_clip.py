"""A real H.264 clip cut into trickle segments, as go-livepeer's gateway sends a live stream.

- ``photo_clip``: frames filmed from scikit-image's bundled photographs (no download) with camera motion
  and sensor noise, at any size;
- ``encode_segments``: video-only MPEG-TS, one standalone TS per GOP (PAT/PMT first, keyframe first), with
  the exact TS bytes of every frame kept apart so a publisher can send each frame at its own time;
- ``decode_frames``: what a reader's decoder makes of TS bytes (pts, RGB), the reference for "the input frame";
- ``shift_pts``: the same TS bytes with every PTS/DTS/PCR moved, to loop a clip with pts continuing.

The clip is encoded up front so that publishing costs next to no CPU during a benchmark.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
from PIL import Image

TS = 188  # MPEG-TS packet size
PTS_HZ = 90000  # MPEG-TS clock


@dataclass
class EncodedFrame:
    pts: int  # 1/90000, as a demuxer reads it back
    data: bytes  # the TS packets that carry this frame (the segment's PAT/PMT go with its first frame)


@dataclass
class Segment:
    frames: list[EncodedFrame]

    @property
    def data(self) -> bytes:
        return b"".join(f.data for f in self.frames)


def photo_clip(frames: int, height: int, width: int, seed: int = 0) -> list[np.ndarray]:
    """RGB uint8 frames: a slow pan and a slight zoom across a photograph, plus Gaussian sensor noise."""
    from skimage import data  # the bench/dev extra

    rng = np.random.default_rng(seed)
    photo = Image.fromarray([data.astronaut, data.coffee, data.chelsea][seed % 3]())
    pw, ph = photo.size
    # The largest window of the output's aspect that fits, shrunk so the pan and zoom stay inside the photograph.
    base = 0.8 * min(pw / width, ph / height)
    phase = rng.uniform(0, 2 * np.pi)
    clip = []
    for i in range(frames):
        t = 2 * np.pi * i / 240 + phase  # one slow oscillation every 10 s at 24 fps
        scale = base * (1 - 0.05 * (1 + np.sin(0.7 * t)) / 2)  # zoom in by up to 5 %
        w, h = width * scale, height * scale
        cx = pw / 2 + (pw - w) / 2 * 0.9 * np.sin(t)
        cy = ph / 2 + (ph - h) / 2 * 0.5 * np.cos(t)
        box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        frame = np.asarray(photo.resize((width, height), Image.BICUBIC, box=box), dtype=np.float32)
        frame = frame + rng.standard_normal(frame.shape, dtype=np.float32) * 2.0
        clip.append(np.clip(frame + 0.5, 0, 255).astype(np.uint8))
    return clip


def encode_segments(
    frames: list[np.ndarray], fps: int = 24, gop: int = 24, codec: str = "libx264", pts0: int = PTS_HZ
) -> list[Segment]:
    """Video-only MPEG-TS segments of ``gop`` frames, each a standalone TS starting at a keyframe.

    Each segment is its own encoder and muxer (a GOP is independent anyway), so every segment starts with
    PAT/PMT and an IDR frame carrying SPS/PPS, as the gateway's segmenter cuts a stream at keyframes.
    pts (1/90000) start at ``pts0``, rounded to a whole frame, and step by 90000/fps.
    """
    height, width = frames[0].shape[:2]
    segments = []
    for start in range(0, len(frames), gop):
        buf = io.BytesIO()
        out = av.open(
            buf,
            "w",
            format="mpegts",
            options={
                "flush_packets": "1",  # every packet reaches ``buf`` at mux(), so its bytes can be attributed
                # With the default 1 a video PES carries no length, so a reader's demuxer can end a frame only when
                # the next frame's PES begins: one frame interval more (42 ms at 24 fps) in every reader. 0 writes
                # the length whenever it fits (a frame under 64 KiB), and the frame can be decoded on arrival.
                "omit_video_pes_length": "0",
            },
        )
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = Fraction(1, fps)  # MPEG-2 accepts only its frame rates, not 1/90000
        stream.codec_context.gop_size = gop
        stream.codec_context.max_b_frames = 0
        if codec == "libx264":
            stream.codec_context.options = {"preset": "superfast", "tune": "zerolatency"}
        pts: dict[int, bytes] = {}  # pts -> its TS bytes, in encoding order
        for i, rgb in enumerate(frames[start : start + gop], start):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = round(pts0 * fps / PTS_HZ) + i, stream.codec_context.time_base
            _mux(out, buf, stream.encode(frame), pts)
        _mux(out, buf, stream.encode(None), pts)
        out.close()
        last = next(reversed(pts))
        pts[last] += buf.getvalue()[sum(map(len, pts.values())) :]  # bytes written at close go to the last frame
        segments.append(Segment([EncodedFrame(p, data) for p, data in sorted(pts.items())]))
    return segments


def _mux(out, buf: io.BytesIO, packets, pts: dict[int, bytes]) -> None:
    """Mux each packet and give it the bytes that appeared; the first also takes any written before it."""
    for packet in packets:
        done, key = sum(map(len, pts.values())), round(packet.pts * packet.time_base * PTS_HZ)
        out.mux(packet)
        buf.seek(done)
        pts[key] = buf.read()  # and the muxer writes on at the end


def decode_frames(data: bytes) -> list[tuple[int, np.ndarray]]:
    """(pts, RGB frame) of every frame of a TS byte string, decoded by PyAV (demuxer, parser and decoder)."""
    with av.open(io.BytesIO(data), format="mpegts") as container:
        return [(f.pts, f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]


def shift_pts(data: bytes, delta: int) -> bytes:
    """The same TS packets with every PES PTS/DTS and every PCR moved by ``delta`` (1/90000)."""
    out = bytearray(data)
    assert len(out) % TS == 0, "whole TS packets only"
    for p in range(0, len(out), TS):
        afc, offset = out[p + 3] >> 4 & 3, p + 4
        if afc & 2:  # an adaptation field, maybe with a PCR
            if out[p + 4] and out[p + 5] & 0x10:
                b = out[p + 6 : p + 12]
                base = (int.from_bytes(b[:4], "big") << 1 | b[4] >> 7) + delta & (1 << 33) - 1
                out[p + 6 : p + 11] = (base << 7 | b[4] & 0x7F).to_bytes(5, "big")
            offset += 1 + out[p + 4]
        if afc & 1 and out[p + 1] & 0x40 and out[offset : offset + 3] == b"\0\0\1":  # the start of a PES
            flags = out[offset + 7] >> 6
            for at in [offset + 9] * (flags >= 2) + [offset + 14] * (flags == 3):  # PTS, then DTS
                _put_ts(out, at, pes_time(out, at) + delta)
    return bytes(out)


def pes_time(b: bytes | bytearray, i: int) -> int:
    """The 33-bit PTS or DTS at b[i:i + 5] of a PES header."""
    return (b[i] >> 1 & 7) << 30 | b[i + 1] << 22 | (b[i + 2] >> 1) << 15 | b[i + 3] << 7 | b[i + 4] >> 1


def _put_ts(b: bytearray, i: int, v: int) -> None:
    v &= (1 << 33) - 1
    b[i : i + 5] = bytes(
        [b[i] & 0xF0 | v >> 29 & 0x0E | 1, v >> 22 & 0xFF, v >> 14 & 0xFE | 1, v >> 7 & 0xFF, v << 1 & 0xFE | 1]
    )
