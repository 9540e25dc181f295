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

from tests.fake_gpu import FakeCuda, FakeNvImgCodec, FakeTensorRT, engines_with_fake_plans, patch_in_fake_gpu
from tests.nodes import frame, node_client, raw_type
from tests.test_tensorrt_backend import open_backend
from vision_node.contract import FRAME_INPUT
from vision_node.errors import StartupError
from vision_node.runtime.gpu_decode import GpuJpegDecoder


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


# ---------------------------------------------------------------- through the server


@pytest.fixture
def gpu_decoding_node(tiny_build, tmp_path, monkeypatch):
    """FAKE TensorRT, pycuda and nvImageCodec where the node loads them: (engines, the fake codec)."""
    from vision_node.runtime import gpu_decode

    trt, _ = patch_in_fake_gpu(monkeypatch)
    engines_with_fake_plans(tiny_build[0], tmp_path / "engines")
    codec = FakeNvImgCodec(trt.cuda)
    monkeypatch.setattr(gpu_decode, "import_nvimgcodec", lambda: codec)
    return tmp_path / "engines", codec


def test_the_server_hands_jpeg_to_the_gpu_decoder_and_answers_as_the_cpu_decode(gpu_decoding_node):
    engines, codec = gpu_decoding_node
    data = jpeg_of(120, 160)
    headers = {"content-type": "image/jpeg"}
    with node_client(engines, backend="tensorrt") as cpu:
        want = cpu.post("/infer/segmentation/raw", content=data, headers=headers).content
    assert not codec.decoded
    with node_client(engines, backend="tensorrt", gpu_decode=True) as gpu:
        r = gpu.post("/infer/segmentation/raw", content=data, headers=headers)
        assert r.status_code == 200 and r.content == want
        assert codec.decoded[-1][1] == (120, 160)
        decoded = len(codec.decoded)
        both = gpu.post("/infer/segmentation+depth", content=data, headers=headers)
        assert both.status_code == 200 and len(codec.decoded) == decoded  # a combination decodes once, on the CPU
        raw = frame(120, 160)
        r = gpu.post("/infer/segmentation/raw", content=raw.tobytes(), headers={"content-type": raw_type(raw)})
        assert r.status_code == 200 and len(codec.decoded) == decoded  # raw frames are copied up as always


def test_a_jpeg_the_gpu_refuses_and_the_cpu_finds_corrupt_is_a_400_not_a_backend_failure(gpu_decoding_node):
    engines, codec = gpu_decoding_node
    codec.refuse = True
    cut = jpeg_of(120, 160)[:2000]  # the header is whole: it passes the checks made before the worker
    with node_client(engines, backend="tensorrt", gpu_decode=True, max_consecutive_failures=1) as client:
        r = client.post("/infer/depth", content=cut, headers={"content-type": "image/jpeg"})
        assert r.status_code == 400 and "could not be decoded" in r.json()["detail"]
        assert client.get("/ready").status_code == 200  # not counted as a failure of the device
        ok = client.post("/infer/depth", content=jpeg_of(120, 160), headers={"content-type": "image/jpeg"})
        assert ok.status_code == 200  # the refused-by-GPU frame decoded on the CPU instead


def test_gpu_decode_needs_a_tensorrt_backend():
    from vision_node.config import Config

    with pytest.raises(StartupError, match="gpu_decode: needs a TensorRT backend"):
        Config(gpu_decode=True)
