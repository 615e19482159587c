"""JPEG decoding through libjpeg-turbo's TurboJPEG library (ctypes), with DCT-domain downscaling.

OpenCV's own JPEG path measured slower than TurboJPEG on the same payloads
(``benchmarks/jpeg_decode.py``, figures in ``docs/benchmarks.md``), so shard readers decode here.
TurboJPEG is the library ffcv links against (the setup installs ``libturbojpeg0-dev``); where
it is absent (``ARINV_JPEG_DECODER=opencv`` forces this too) decoding falls back to OpenCV.

``decode_jpeg(payload, scale)`` returns uint8 height x width x 3 RGB at 1/``scale`` of the full
size (``scale`` in 1, 2, 4, 8: libjpeg-turbo's SIMD-accelerated IDCT sizes; 3/4, 5/8 ... are
plain C and measured slower than a full decode), rounded up like libjpeg does.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import threading
import warnings

import numpy as np

SCALES = (1, 2, 4, 8)
_TJPF_RGB = 0
_TJERR_FATAL = 1


class JpegError(ValueError):
    """A payload that is not a decodable JPEG."""


def scaled(size: int, scale: int) -> int:
    """libjpeg's output size for ``size`` pixels decoded at 1/``scale``."""
    return -(-size // scale)


def _candidates() -> list[str]:
    names = (os.environ.get("ARINV_TURBOJPEG"), ctypes.util.find_library("turbojpeg"),
             "libturbojpeg.so.0", "libturbojpeg.dylib")
    return [n for n in names if n]


def _declare(lib, name: str):
    c_int_p = ctypes.POINTER(ctypes.c_int)
    lib.tjInitDecompress.restype = ctypes.c_void_p
    lib.tjDestroy.argtypes = [ctypes.c_void_p]
    lib.tjDecompressHeader3.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_ulong,
                                        c_int_p, c_int_p, c_int_p, c_int_p]
    lib.tjDecompress2.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_ulong,
                                  ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                  ctypes.c_int, ctypes.c_int]
    lib.tjGetErrorStr2.argtypes = [ctypes.c_void_p]
    lib.tjGetErrorStr2.restype = ctypes.c_char_p
    lib.tjGetErrorCode.argtypes = [ctypes.c_void_p]
    lib.arinv_path = name
    return lib


@functools.cache
def _library():
    """The TurboJPEG library with its argument types declared, or None."""
    if os.environ.get("ARINV_JPEG_DECODER", "turbojpeg").lower() == "opencv":
        return None
    for name in _candidates():
        try:
            return _declare(ctypes.CDLL(name), name)
        except (OSError, AttributeError):  # not there, or older than TurboJPEG 2.0
            continue
    warnings.warn("libturbojpeg not found: decoding JPEGs with OpenCV, about 1.2x slower. Install "
                  "it (Debian/Ubuntu: apt-get install libturbojpeg0) or point ARINV_TURBOJPEG at "
                  "the library file", RuntimeWarning, stacklevel=3)
    return None


def backend() -> str:
    """Which decoder this process uses: ``turbojpeg (<library>)`` or ``opencv``."""
    lib = _library()
    return f"turbojpeg ({lib.arinv_path})" if lib is not None else "opencv"


class _Handle(threading.local):
    """One TurboJPEG decompressor per thread (a handle is not thread-safe)."""

    def __init__(self):
        lib = _library()
        self.lib, self.ptr = lib, lib.tjInitDecompress()
        if not self.ptr:
            raise JpegError("TurboJPEG could not create a decompressor (out of memory?)")

    def __del__(self):
        if getattr(self, "ptr", None):
            try:
                self.lib.tjDestroy(self.ptr)
            except (AttributeError, TypeError):  # interpreter shutdown: globals already gone
                pass

    def error(self) -> str:
        return self.lib.tjGetErrorStr2(self.ptr).decode(errors="replace")


_handle: _Handle | None = None


def _turbo_decode(lib, payload: bytes, scale: int) -> np.ndarray:
    global _handle
    if _handle is None:
        _handle = _Handle()
    h = _handle
    w, hh, sub, cs = ctypes.c_int(), ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    if lib.tjDecompressHeader3(h.ptr, payload, len(payload), ctypes.byref(w), ctypes.byref(hh),
                               ctypes.byref(sub), ctypes.byref(cs)) != 0:
        raise JpegError(f"not a JPEG: {h.error()}")
    ow, oh = scaled(w.value, scale), scaled(hh.value, scale)
    out = np.empty((oh, ow, 3), np.uint8)
    if lib.tjDecompress2(h.ptr, payload, len(payload), out.ctypes.data, ow, 0, oh, _TJPF_RGB,
                         0) != 0:
        # libjpeg's warnings ("Corrupt JPEG data", a premature end of the scan) still return
        # an image, but a damaged one: the shard writer never stores such a file, so it is
        # corruption in storage, reported like a fatal error.
        fatal = lib.tjGetErrorCode(h.ptr) == _TJERR_FATAL
        raise JpegError(f"undecodable JPEG: {h.error()}" if fatal else
                        f"damaged JPEG ({h.error()})")
    return out


_CV2_FLAGS = {1: "IMREAD_COLOR", 2: "IMREAD_REDUCED_COLOR_2", 4: "IMREAD_REDUCED_COLOR_4",
              8: "IMREAD_REDUCED_COLOR_8"}


def _opencv_decode(payload: bytes, scale: int) -> np.ndarray:
    import cv2

    image = cv2.imdecode(np.frombuffer(payload, np.uint8), getattr(cv2, _CV2_FLAGS[scale]))
    if image is None:
        raise JpegError("not a decodable JPEG (OpenCV returned nothing)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def decode_jpeg(payload: bytes, scale: int = 1) -> np.ndarray:
    """``payload`` decoded to contiguous uint8 H x W x 3 RGB at 1/``scale`` size. Corrupt data
    raises ``JpegError`` with TurboJPEG, also where libjpeg only warns; OpenCV's fallback
    detects only undecodable payloads (it decodes damaged scans silently)."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale}")
    lib = _library()
    return _turbo_decode(lib, payload, scale) if lib is not None else _opencv_decode(payload, scale)
