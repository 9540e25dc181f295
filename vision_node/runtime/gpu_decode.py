"""JPEG frames decoded on the GPU (nvImageCodec / nvJPEG) straight into a device buffer the caller owns.

With ``--gpu-decode`` a TensorRT backend hands each JPEG's bytes here and the decoded RGB lands in
its engine's input buffer: no CPU decode, no host-to-device copy of the frame. The CPU decode
(libjpeg-turbo, ``vision_node.media.frames``) stays the fallback and is what ONNX Runtime uses; every check a
frame needs (format, header, bounds) is made on the CPU from the header before either decode.

nvImageCodec imports on a machine without a driver but cannot create a decoder there, so it is
opened only with a GPU (the ``gpu-decode`` extra: ``nvidia-nvimgcodec-cu13[nvjpeg]``). Options:
fancy upsampling and no EXIF rotation, as libjpeg-turbo decodes for the CPU path.
"""

from __future__ import annotations

from typing import Any

from ..errors import StartupError

_OPTIONS = ":fancy_upsampling=1"  # libjpeg-turbo's default chroma upsampling, so both decodes agree


class DeviceFrame:
    """A uint8 [H, W, 3] view of device memory, as ``__cuda_array_interface__`` (v3) describes it."""

    def __init__(self, address: int, height: int, width: int, stream: int = 0):
        self.__cuda_array_interface__ = {
            "shape": (height, width, 3),
            "typestr": "|u1",
            "data": (int(address), False),
            "strides": None,
            "version": 3,
            "stream": stream or None,
        }


class GpuJpegDecoder:
    """``with GpuJpegDecoder() as d: d.decode_into(jpeg_bytes, device_address, h, w, stream_handle)``.

    One decoder serves every engine: the TensorRT backends call it under their shared scratch's lock,
    on their one stream, so calls never overlap."""

    name = "nvimgcodec"

    def __init__(self, device_id: int = 0, module=None):
        self.device_id = device_id
        self._module = module  # tests pass a FAKE here; None imports nvidia.nvimgcodec
        # nvImageCodec's Decoder and DecodeParams while open (nvImageCodec ships no types).
        self._decoder: Any = None
        self._params: Any = None

    def __enter__(self) -> GpuJpegDecoder:
        codec = self._module or import_nvimgcodec()
        try:
            self._decoder = codec.Decoder(device_id=self.device_id, options=_OPTIONS)
        except Exception as err:  # nvImageCodec raises RuntimeError without a driver ("Could not create decoder")
            raise StartupError(f"--gpu-decode: nvImageCodec could not create a GPU decoder: {err}") from None
        self._params = codec.DecodeParams(apply_exif_orientation=False, color_spec=codec.ColorSpec.SRGB)
        self._module = codec
        return self

    def __exit__(self, *exc) -> None:
        self._decoder = self._params = None

    def decode_into(self, data: bytes, address: int, height: int, width: int, stream: int) -> bool:
        """Decode ``data`` (a JPEG whose header said ``height`` x ``width``) into the device buffer at
        ``address``, queued on ``stream``. False when nvImageCodec could not: the caller decodes on the CPU."""
        codec = self._module
        target = codec.as_image(DeviceFrame(address, height, width, stream), cuda_stream=stream)
        try:
            image = self._decoder.decode(
                codec.CodeStream(bytes(data)), image=target, params=self._params, cuda_stream=stream
            )
        except Exception:  # an unsupported JPEG flavour or corrupt data: the CPU path decides, and says why
            return False
        return image is not None and tuple(image.shape[:2]) == (height, width)


def import_nvimgcodec():
    try:
        from nvidia import nvimgcodec  # only with --gpu-decode
    except ImportError as err:
        raise StartupError(f"--gpu-decode needs nvImageCodec: pip install -e '.[gpu-decode]' ({err})") from None
    return nvimgcodec
