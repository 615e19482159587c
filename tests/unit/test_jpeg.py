"""The TurboJPEG decoder (arinv.data.jpeg) against Pillow's libjpeg-turbo decode of the same
bytes, its DCT-domain scales, bad payloads, threads, and the OpenCV fallback."""

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from arinv.data import jpeg
from arinv.data.beton import JPEG, BetonError, decode

pytestmark = pytest.mark.skipif(jpeg._library() is None,
                                reason="libturbojpeg is not installed (the setup installs it)")


def _jpeg(h=75, w=101, mode="RGB", quality=90, seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    pixels = np.stack([(xx * 255 // w), (yy * 255 // h), (xx + yy) % 256], -1)
    pixels = (pixels + rng.integers(0, 30, pixels.shape)).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(pixels)
    buf = io.BytesIO()
    (img.convert("L") if mode == "L" else img).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def test_full_size_decode_matches_pillow():
    payload = _jpeg()
    ours = jpeg.decode_jpeg(payload)
    ref = np.asarray(Image.open(io.BytesIO(payload)).convert("RGB"))
    assert ours.dtype == np.uint8 and ours.shape == ref.shape == (75, 101, 3)
    assert ours.flags["C_CONTIGUOUS"]
    assert np.abs(ours.astype(int) - ref).mean() < 1.0


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_scaled_decode_has_libjpeg_sizes_and_the_image_content(scale):
    payload = _jpeg(h=75, w=101)
    small = jpeg.decode_jpeg(payload, scale)
    assert small.shape == (-(-75 // scale), -(-101 // scale), 3)
    pooled = Image.open(io.BytesIO(payload)).convert("RGB").resize(small.shape[1::-1], Image.BOX)
    assert np.abs(small.astype(np.float32) - np.asarray(pooled, np.float32)).mean() < 12


def test_grayscale_jpeg_comes_back_as_three_equal_channels():
    out = jpeg.decode_jpeg(_jpeg(mode="L"))
    assert out.shape == (75, 101, 3)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_bad_payloads_raise_jpeg_error():
    with pytest.raises(jpeg.JpegError, match="not a JPEG"):
        jpeg.decode_jpeg(b"this is not an image at all")
    with pytest.raises(ValueError, match="scale must be one of"):
        jpeg.decode_jpeg(_jpeg(), 3)
    with pytest.raises(BetonError, match="JPEG payload"):
        decode(b"\xff\xd8garbage", JPEG, 10, 10)
    with pytest.raises(BetonError, match=r"decoded to \(75, 101, 3\), expected \(10, 10, 3\)"):
        decode(_jpeg(), JPEG, 10, 10)


def test_threads_each_get_their_own_decompressor():
    payloads = [_jpeg(seed=i) for i in range(16)]
    serial = [jpeg.decode_jpeg(p) for p in payloads]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(jpeg.decode_jpeg, payloads * 4))
    for i, out in enumerate(threaded):
        np.testing.assert_array_equal(out, serial[i % 16])


def test_opencv_fallback_decodes_the_same_image(monkeypatch):
    payload = _jpeg()
    turbo = jpeg.decode_jpeg(payload)
    turbo_half = jpeg.decode_jpeg(payload, 2)
    monkeypatch.setenv("ARINV_JPEG_DECODER", "opencv")
    jpeg._library.cache_clear()
    try:
        assert jpeg.backend() == "opencv"
        cv = jpeg.decode_jpeg(payload)
        assert cv.shape == turbo.shape and cv.flags["C_CONTIGUOUS"]
        assert np.abs(cv.astype(int) - turbo).mean() < 1.0
        assert jpeg.decode_jpeg(payload, 2).shape == turbo_half.shape
        with pytest.raises(jpeg.JpegError):
            jpeg.decode_jpeg(b"not a jpeg")
    finally:
        monkeypatch.delenv("ARINV_JPEG_DECODER")
        jpeg._library.cache_clear()
    assert jpeg.backend().startswith("turbojpeg")


def test_a_missing_library_warns_and_falls_back_to_opencv(monkeypatch):
    monkeypatch.setattr(jpeg, "_candidates", lambda: ["/nonexistent/libturbojpeg.so.0"])
    jpeg._library.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="libturbojpeg not found.*ARINV_TURBOJPEG"):
            assert jpeg.backend() == "opencv"
        assert jpeg.decode_jpeg(_jpeg()).shape == (75, 101, 3)
    finally:
        monkeypatch.undo()
        jpeg._library.cache_clear()
    assert jpeg.backend().startswith("turbojpeg")
