"""``--gpu-decode``'s logic against FAKE nvImageCodec, TensorRT and pycuda (tests/fake_gpu.py).

What this proves: the JPEG's bytes go to the decoder with the engine's input buffer as the target,
nothing is copied from the host for that frame, the outputs equal the CPU decode's, and a decoder that
says no falls back to the CPU. What it cannot prove is nvJPEG itself: that is the GPU check
(``python -m benchmarks gpu-check``) on a machine with an NVIDIA GPU.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import simplejpeg
from PIL import Image

from node.contract import FRAME_INPUT
from node.errors import StartupError
from node.runtime.gpu_decode import GpuJpegDecoder
from tests.fake_gpu import FakeCuda, FakeNvImgCodec, FakeTensorRT
from tests.nodes import frame
from tests.test_tensorrt_backend import open_backend


def jpeg_of(h: int, w: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(frame(h, w)).save(out, "JPEG", quality=90)
    return out.getvalue()


@pytest.fixture
def fakes():
    cuda = FakeCuda()
    return FakeTensorRT(cuda), cuda


@pytest.mark.parametrize("capability", ["depth", "segmentation"])
def test_a_jpeg_decoded_into_the_engine_input_gives_the_cpu_decodes_outputs(tiny_build, fakes, capability):
    backend, reference, _ = open_backend(tiny_build, capability, fakes)
    codec = FakeNvImgCodec(fakes[1])
    with GpuJpegDecoder(module=codec) as decoder:
        for h, w in [(120, 160), (97, 131), (120, 160)]:
            data = jpeg_of(h, w)
            before = len(fakes[1].calls)
            got = {k: v.copy() for k, v in backend.infer_jpeg(data, h, w, decoder).items()}
            assert not [c for c in fakes[1].calls[before:] if c[0] == "htod"]  # no host-to-device copy of the frame
            assert codec.decoded[-1] == (int(backend.buffers[FRAME_INPUT].device), (h, w))
            want = reference.infer({FRAME_INPUT: simplejpeg.decode_jpeg(data)[None]})
            for name in want:
                np.testing.assert_array_equal(got[name], want[name], err_msg=f"{capability} {name} {h}x{w}")


def test_a_decoder_that_says_no_leaves_the_frame_to_the_cpu(tiny_build, fakes):
    backend, _, _ = open_backend(tiny_build, "depth", fakes)
    with GpuJpegDecoder(module=FakeNvImgCodec(fakes[1], refuse=True)) as decoder:
        assert backend.infer_jpeg(jpeg_of(120, 160), 120, 160, decoder) is None


def test_a_frame_outside_the_bounds_is_refused_before_the_decoder_sees_it(tiny_build, fakes):
    backend, _, _ = open_backend(tiny_build, "depth", fakes)
    codec = FakeNvImgCodec(fakes[1])
    with GpuJpegDecoder(module=codec) as decoder, pytest.raises(ValueError, match="outside"):
        backend.infer_jpeg(jpeg_of(40, 40), 40, 40, decoder)
    assert not codec.decoded


def test_no_gpu_decoder_is_a_startup_error_that_says_why():
    with pytest.raises(StartupError, match="could not create a GPU decoder: Could not create decoder"):
        GpuJpegDecoder(module=FakeNvImgCodec(FakeCuda(), fail_to_open=True)).__enter__()


def test_without_nvimgcodec_the_error_names_the_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_nvimgcodec(name, *args, **kwargs):
        if name == "nvidia" or name.startswith("nvidia."):
            raise ImportError("No module named 'nvidia'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_nvimgcodec)
    with pytest.raises(StartupError, match=r"pip install -e '\.\[gpu-decode\]'"):
        GpuJpegDecoder().__enter__()
