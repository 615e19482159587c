"""The FFCV ``.beton`` format: written with ffcv's ``DatasetWriter``, read back with numpy alone.

Layout (ffcv 1.0.2: ``ffcv/types.py``, ``ffcv/writer.py``), all little-endian::

    header       version u2 (= 2), num_fields u2, page_size u4, num_samples u8, alloc_table_ptr u8
    fields       num_fields x (type_id u1, name 16 bytes NUL-padded, arguments 1024 bytes)
    metadata     num_samples rows, one column per field, laid out as an aligned numpy struct:
                 RGBImageField (mode u1 [0 jpg, 1 raw], width u2, height u2, data_ptr u8), IntField i8
    data pages   page_size-aligned pages holding the image payloads
    alloc table  (sample_id u8, ptr u8, size u8) rows, from alloc_table_ptr to the end of the file

There is no magic number, so the version field and the structural checks below are all that tell
a .beton from any other file. ``BetonReader`` works over any ``read_at(offset, size) -> bytes``
(a local file, an S3 range request), so a Ray read task can stream an index range of a shard.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple, NoReturn

import numpy as np

from .jpeg import JpegError, decode_jpeg

ReadAt = Callable[[int, int], bytes]

VERSION = 2
JPEG, RAW = 0, 1
MAX_RESOLUTION_LIMIT = 16384
_MIN_PAGE_SIZE = 1 << 21  # ffcv.writer.MIN_PAGE_SIZE

HEADER = np.dtype([("version", "<u2"), ("num_fields", "<u2"), ("page_size", "<u4"),
                   ("num_samples", "<u8"), ("alloc_table_ptr", "<u8")], align=True)
FIELD_DESC = np.dtype([("type_id", "<u1"), ("name", ("<u1", 16)), ("arguments", ("<u1", 1024))],
                      align=True)
ALLOC = np.dtype([("sample_id", "<u8"), ("ptr", "<u8"), ("size", "<u8")])
RGB_META = np.dtype([("mode", "<u1"), ("width", "<u2"), ("height", "<u2"), ("data_ptr", "<u8")])
INT_META = np.dtype("<i8")
FIELD_TYPES = {0: "FloatField", 1: "IntField", 2: "RGBImageField", 3: "BytesField",
               4: "NDArrayField", 5: "JSONField", 6: "TorchTensorField", 255: "custom"}
_SUPPORTED = {1: INT_META, 2: RGB_META}


class BetonError(ValueError):
    """A .beton file is malformed or unsupported; the message names the file and what is wrong."""


class Record(NamedTuple):
    payload: bytes  # JPEG bytes (mode 0) or raw H x W x 3 uint8 pixels (mode 1)
    mode: int
    width: int
    height: int
    label: int


# --- writing -------------------------------------------------------------------------------------

def page_size_for(max_resolution: int) -> int:
    """The smallest power-of-two page (>= ffcv's 2 MiB minimum) that holds any one sample.

    A sample never spans pages and ffcv pads the data region to a page boundary and writes the
    last page in full, so every file is at least two pages: small pages keep small shards small.
    """
    need = 2 * 3 * max_resolution ** 2  # raw pixels, with room for a JPEG larger than raw
    return max(_MIN_PAGE_SIZE, 1 << (need - 1).bit_length())


def write_beton(path: str | os.PathLike, dataset: Sequence[tuple[np.ndarray, int]], *,
                max_resolution: int = 500, jpeg_quality: int = 90,
                compress_probability: float = 0.5, num_workers: int = 1,
                progress: bool = False) -> None:
    """Write ``(uint8 H x W x 3, int label)`` items as fields "image" and "label".

    Images larger than ``max_resolution`` on their long side are shrunk (ffcv's INTER_AREA
    resize); each image is stored as JPEG with probability ``compress_probability``, else raw.
    """
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    if len(dataset) == 0:
        raise ValueError(f"{path}: cannot write a .beton with no samples")
    if not 1 <= max_resolution <= MAX_RESOLUTION_LIMIT:
        raise ValueError(f"max_resolution must be in 1..{MAX_RESOLUTION_LIMIT}, got {max_resolution}")
    fields = {"image": RGBImageField(write_mode="proportion", max_resolution=max_resolution,
                                     compress_probability=compress_probability,
                                     jpeg_quality=jpeg_quality),
              "label": IntField()}
    writer = DatasetWriter(str(path), fields, page_size=page_size_for(max_resolution),
                           num_workers=num_workers)
    with _ffcv_progress(progress):
        writer.from_indexed_dataset(_Checked(dataset))
    with BetonReader.from_path(path) as written:
        failed = np.flatnonzero(written.labels == _FAILED)
    if len(failed):
        Path(path).unlink()
        _checked_item(dataset[int(failed[0])])  # re-raises the item's own error here
        raise RuntimeError(f"{path}: item {failed[0]} failed in ffcv's writer process")


_FAILED = np.iinfo(np.int64).min
_PLACEHOLDER = np.zeros((1, 1, 3), np.uint8)


def _checked_item(item: tuple[np.ndarray, int]) -> tuple[np.ndarray, int]:
    image, label = item
    image = np.ascontiguousarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"images must be uint8 H x W x 3, got {image.dtype} {image.shape}")
    return image, int(label)


class _Checked:
    """Runs in ffcv's writer processes. ffcv waits forever for a writer process that raised
    (ffcv/writer.py: ``while previous != self.num_samples``), so a bad item is stored as a
    placeholder with a sentinel label instead, and ``write_beton`` re-raises its error."""

    def __init__(self, dataset: Sequence[tuple[np.ndarray, int]]):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        try:
            return _checked_item(self.dataset[i])
        except Exception:  # noqa: BLE001 - re-raised by write_beton in the calling process
            return _PLACEHOLDER, _FAILED


@contextmanager
def _ffcv_progress(show: bool) -> Iterator[None]:
    """ffcv's writer always draws a tqdm bar; callers that draw their own turn it off."""
    import ffcv.writer

    original = ffcv.writer.tqdm
    if not show:
        ffcv.writer.tqdm = lambda *a, **kw: original(*a, **kw, disable=True)
    try:
        yield
    finally:
        ffcv.writer.tqdm = original


# --- reading -------------------------------------------------------------------------------------

class _File:
    """``read_at`` over a local file with ``pread`` (no shared file position, thread-safe)."""

    def __init__(self, path: str | os.PathLike):
        self.fd = os.open(path, os.O_RDONLY)
        self.size = os.fstat(self.fd).st_size

    def __call__(self, offset: int, size: int) -> bytes:
        return os.pread(self.fd, size, offset)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class BetonReader:
    """Parse and validate a .beton's header, fields, metadata and allocation table up front;
    then read samples by index. Supports files with one RGBImageField and one IntField."""

    def __init__(self, read_at: ReadAt, total_size: int, *, name: str = "<beton>"):
        self.read_at, self.total_size, self.name = read_at, int(total_size), str(name)
        header = self._array(0, HEADER, 1, "header")[0]
        if header["version"] != VERSION:
            self._fail(f"not an FFCV .beton (version field is {header['version']}, expected "
                       f"{VERSION})")
        self.num_samples = int(header["num_samples"])
        self.page_size = int(header["page_size"])
        self.fields = self._read_fields(int(header["num_fields"]))
        self._read_metadata(int(header["alloc_table_ptr"]))

    @classmethod
    def from_path(cls, path: str | os.PathLike) -> BetonReader:
        source = _File(path)
        try:
            return cls(source, source.size, name=os.fspath(path))
        except BaseException:
            source.close()
            raise

    def close(self) -> None:
        getattr(self.read_at, "close", lambda: None)()

    def __enter__(self) -> BetonReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return self.num_samples

    @property
    def labels(self) -> np.ndarray:
        return self._label

    def record(self, i: int) -> Record:
        if not 0 <= i < self.num_samples:
            raise IndexError(f"{self.name}: sample {i} out of range 0..{self.num_samples - 1}")
        return self._record(i, self._read(int(self._ptr[i]), int(self._size[i]), f"sample {i}"))

    def records(self, start: int, stop: int, *, max_gap: int = 1 << 20) -> list[Record]:
        """Samples ``start..stop-1`` in order, fetched with as few reads as possible: payloads
        closer than ``max_gap`` bytes (page-end slack) are read as one range."""
        if not 0 <= start <= stop <= self.num_samples:
            raise IndexError(f"{self.name}: range {start}..{stop} not within 0..{self.num_samples}")
        out: list[Record | None] = [None] * (stop - start)
        for lo, hi, ids in _coalesce(self._ptr[start:stop], self._size[start:stop], max_gap):
            view = memoryview(self._read(lo, hi - lo, f"samples {start}..{stop - 1}"))
            for j in ids:
                a = int(self._ptr[start + j]) - lo
                out[j] = self._record(start + j, bytes(view[a:a + int(self._size[start + j])]))
        return out  # type: ignore[return-value]

    def _record(self, i: int, payload: bytes) -> Record:
        return Record(payload, int(self._mode[i]), int(self._width[i]), int(self._height[i]),
                      int(self._label[i]))

    def _read_fields(self, num_fields: int) -> list[tuple[str, str]]:
        if not 1 <= num_fields <= 64:
            self._fail(f"implausible field count {num_fields}")
        desc = self._array(HEADER.itemsize, FIELD_DESC, num_fields, "field descriptors")
        fields = []
        for d in desc:
            try:
                name = d["name"].tobytes().split(b"\0")[0].decode("ascii")
            except UnicodeDecodeError:
                self._fail("a field name is not ASCII (corrupt field descriptors)")
            fields.append((name, FIELD_TYPES.get(int(d["type_id"]), f"unknown ({d['type_id']})")))
        types = [int(d["type_id"]) for d in desc]
        if sorted(types) != [1, 2]:
            self._fail(f"fields {fields} are not supported: this reader needs exactly one "
                       "RGBImageField and one IntField")
        self._meta_dtype = np.dtype([(n, _SUPPORTED[t]) for (n, _), t in zip(fields, types)],
                                    align=True)  # the same layout as ffcv.types.get_metadata_type
        self._image_field = fields[types.index(2)][0]
        self._label_field = fields[types.index(1)][0]
        return fields

    def _read_metadata(self, alloc_ptr: int) -> None:
        n = self.num_samples
        start = HEADER.itemsize + len(self.fields) * FIELD_DESC.itemsize
        meta_end = start + n * self._meta_dtype.itemsize
        if not meta_end <= alloc_ptr <= self.total_size:
            self._fail(f"allocation table pointer {alloc_ptr} is outside {meta_end}.."
                       f"{self.total_size} (file size {self.total_size} bytes: truncated?)")
        if self.total_size - alloc_ptr != n * ALLOC.itemsize:
            self._fail(f"allocation table holds {(self.total_size - alloc_ptr) / ALLOC.itemsize:g}"
                       f" entries for {n} samples (file size {self.total_size} bytes: truncated "
                       "or has trailing bytes)")
        meta = self._array(start, self._meta_dtype, n, "metadata table")
        alloc = self._array(alloc_ptr, ALLOC, n, "allocation table")
        alloc = alloc[np.argsort(alloc["sample_id"], kind="stable")]
        image = meta[self._image_field]
        self._mode, self._width, self._height = image["mode"], image["width"], image["height"]
        self._label = meta[self._label_field].astype(np.int64)
        self._ptr, self._size = alloc["ptr"].astype(np.int64), alloc["size"].astype(np.int64)
        if not np.array_equal(alloc["sample_id"], np.arange(n)):
            self._fail("allocation table does not list every sample exactly once")
        if not np.array_equal(image["data_ptr"], alloc["ptr"]):
            self._fail("metadata and allocation table disagree on payload offsets")
        if n and (self._ptr.min() < meta_end or (self._ptr + self._size).max() > alloc_ptr):
            self._fail("a payload lies outside the data region (corrupt or truncated file)")
        if np.any(self._mode > RAW) or np.any(self._width == 0) or np.any(self._height == 0):
            self._fail("bad image metadata (unknown mode or zero size)")
        raw = self._mode == RAW
        expected = self._width[raw].astype(np.int64) * self._height[raw] * 3
        if not np.array_equal(self._size[raw], expected):
            self._fail("a raw image's payload size does not match its width x height x 3")

    def _array(self, offset: int, dtype: np.dtype, count: int, what: str) -> np.ndarray:
        return np.frombuffer(self._read(offset, count * dtype.itemsize, what), dtype, count)

    def _read(self, offset: int, size: int, what: str) -> bytes:
        if offset + size > self.total_size:
            self._fail(f"{what} at bytes {offset}..{offset + size} lies past the end of the file "
                       f"({self.total_size} bytes): truncated?")
        data = self.read_at(offset, size)
        if len(data) != size:
            self._fail(f"short read of {what}: {len(data)} of {size} bytes at {offset}")
        return data

    def _fail(self, what: str) -> NoReturn:
        raise BetonError(f"{self.name}: {what}")


def _coalesce(ptrs: np.ndarray, sizes: np.ndarray,
              max_gap: int) -> Iterator[tuple[int, int, list[int]]]:
    """Group payloads into (start, end, indices) byte ranges with gaps of at most ``max_gap``."""
    order = np.argsort(ptrs, kind="stable")
    group: list[int] = []
    lo = hi = 0
    for j in order.tolist():
        p, s = int(ptrs[j]), int(sizes[j])
        if group and p - hi > max_gap:
            yield lo, hi, group
            group = []
        if not group:
            lo = hi = p
        group.append(j)
        hi = max(hi, p + s)
    if group:
        yield lo, hi, group


def decode(payload: bytes, mode: int, width: int, height: int) -> np.ndarray:
    """A sample's payload as uint8 height x width x 3 RGB (libjpeg-turbo for JPEG: ``jpeg``)."""
    if mode == RAW:
        pixels = np.frombuffer(payload, np.uint8)
        if pixels.size != width * height * 3:
            raise BetonError(f"raw payload of {pixels.size} bytes is not {height}x{width}x3")
        return pixels.reshape(height, width, 3).copy()
    if mode != JPEG:
        raise BetonError(f"unknown image mode {mode}")
    try:
        image = decode_jpeg(payload)
    except JpegError as e:
        raise BetonError(f"JPEG payload: {e}") from None
    if image.shape != (height, width, 3):
        raise BetonError(f"JPEG payload decoded to {image.shape}, expected ({height}, {width}, 3)")
    return np.ascontiguousarray(image)
