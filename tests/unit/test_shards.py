"""The .beton format (writer + our numpy reader, cross-checked against ffcv), sources -> shards +
manifest, bad inputs, verification, and the `arinv data` commands."""

import io
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from arinv.data import shards
from arinv.data.beton import RAW, BetonError, BetonReader, decode, write_beton
from arinv.data.sample import sample_set
from arinv.data.shards import ShardError, read_manifest, verify_shards
from arinv.data.sources import SourceError, open_source
from pipelines.cli import main

JPEG_MEAN_ERROR = 8  # grey levels; smooth images at quality 90 land around 3


def smooth(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth RGB image (a bilinear blow-up of 3 x 4 random colours): JPEG-friendly."""
    small = np.random.default_rng(seed).integers(0, 256, (3, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))


def save(path: Path, image, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(path, **kw)
    return path


def read_set(dest: Path) -> tuple[dict, list[tuple[np.ndarray, int]]]:
    """Every sample of a shard set, shard by shard, via BetonReader.records."""
    manifest, out = read_manifest(dest), []
    for shard in manifest["shards"]:
        with BetonReader.from_path(dest / shard["file"]) as reader:
            assert reader.num_samples == shard["num_samples"]
            out += [(decode(*r[:4]), r.label) for r in reader.records(0, len(reader))]
    assert len(out) == manifest["num_samples"]
    return manifest, out


def mean_error(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.abs(a.astype(np.int64) - b).mean())


# --- the .beton format ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def beton(tmp_path_factory):
    """12 constant-size images (ffcv's SimpleRGBImageDecoder needs that), some JPEG, some raw."""
    items = [(smooth(24, 32, i), 7 * i - 20) for i in range(12)]
    path = tmp_path_factory.mktemp("beton") / "set.beton"
    np.random.seed(1)  # ffcv draws JPEG vs raw from numpy's global RNG
    write_beton(path, items, compress_probability=0.5)
    return path, items


def test_reader_matches_ffcv_reader_and_loader(beton):
    from ffcv.fields.decoders import IntDecoder, SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.reader import Reader

    path, items = beton
    ref = Reader(str(path))
    loader = Loader(str(path), batch_size=1, num_workers=1, order=OrderOption.SEQUENTIAL,
                    pipelines={"image": [SimpleRGBImageDecoder()], "label": [IntDecoder()]})
    theirs = [(image[0].copy(), int(label[0, 0])) for image, label in loader]
    with BetonReader.from_path(path) as ours:
        assert ours.num_samples == ref.num_samples == len(items)
        assert ours.fields == [("image", "RGBImageField"), ("label", "IntField")]
        assert ours.total_size == path.stat().st_size
        alloc = np.sort(ref.alloc_table, order="sample_id")
        modes = set()
        for i, rec in enumerate(ours.records(0, len(ours))):
            meta = ref.metadata[i]
            assert (rec.mode, rec.width, rec.height, rec.label) == (
                meta[0]["mode"], meta[0]["width"], meta[0]["height"], meta[1])
            assert len(rec.payload) == alloc[i]["size"]
            assert rec.payload == path.read_bytes()[alloc[i]["ptr"]:][:alloc[i]["size"]]
            image, original = decode(*rec[:4]), items[i][0]
            assert rec.label == theirs[i][1] == items[i][1]
            if rec.mode == RAW:
                np.testing.assert_array_equal(image, original)
                np.testing.assert_array_equal(image, theirs[i][0])
            else:  # ffcv's TurboJPEG call and OpenCV's libjpeg differ by a few levels at most
                assert np.abs(image.astype(int) - theirs[i][0]).max() <= 8
                assert mean_error(image, original) < JPEG_MEAN_ERROR
            modes.add(rec.mode)
    assert modes == {0, 1}, "the fixture should hold both JPEG and raw samples"


def test_records_coalesce_reads_and_work_over_any_byte_source(beton):
    path, items = beton
    data, calls = path.read_bytes(), []

    def read_at(offset: int, size: int) -> bytes:
        calls.append((offset, size))
        return data[offset:offset + size]

    reader = BetonReader(read_at, len(data), name="mem://set.beton")
    calls.clear()
    assert reader.records(3, 9) == [reader.record(i) for i in range(3, 9)]
    assert len(calls) == 1 + 6  # one range for records(), one read per record()
    assert reader.records(5, 5) == []
    assert [r.label for r in reader.records(0, 12, max_gap=0)] == [lab for _, lab in items]
    with pytest.raises(IndexError):
        reader.records(4, 13)


@pytest.mark.parametrize("cut", [10, 3000, 0.5, -1])
def test_truncated_beton_names_the_file(beton, tmp_path, cut):
    path, _ = beton
    data = path.read_bytes()
    bad = tmp_path / "cut.beton"
    bad.write_bytes(data[:int(len(data) * cut) if isinstance(cut, float) else cut])
    with pytest.raises(BetonError, match=r"cut\.beton.*(truncated|past the end)"):
        BetonReader.from_path(bad)


def test_wrong_version_and_unsupported_fields_are_rejected(beton):
    path, _ = beton
    data = bytearray(path.read_bytes())
    data[0] = 3  # version
    with pytest.raises(BetonError, match=r"x\.beton: not an FFCV \.beton .*version field is 3"):
        BetonReader(lambda o, n: bytes(data[o:o + n]), len(data), name="x.beton")
    data[0] = 2
    longer = bytes(data) + b"\0" * 24
    with pytest.raises(BetonError, match="trailing bytes"):
        BetonReader(lambda o, n: longer[o:o + n], len(longer), name="x.beton")
    data[24] = 4  # first field: RGBImageField -> NDArrayField
    with pytest.raises(BetonError, match="NDArrayField.*not supported"):
        BetonReader(lambda o, n: bytes(data[o:o + n]), len(data), name="x.beton")


def test_write_beton_reports_a_bad_item_instead_of_hanging(tmp_path):
    items = [(smooth(8, 8, 0), 0), (np.zeros((8, 8), np.uint8), 1)]
    with pytest.raises(ValueError, match="uint8 H x W x 3"):
        write_beton(tmp_path / "bad.beton", items)
    assert not (tmp_path / "bad.beton").exists()


# --- sources -> shards ---------------------------------------------------------------------------

def test_imagefolder_round_trip_raw_is_exact_and_resized(tmp_path):
    expected = []
    for label, cls in enumerate(["ant", "bee"]):  # labels follow sorted folder names
        for j in range(3):
            image = smooth(20 + j, 30 + 5 * label, 10 * label + j)
            save(tmp_path / "src" / cls / f"{j}.png", image)
            expected.append((image, label))
    save(tmp_path / "src" / "bee" / "big.png", smooth(60, 90, 99))
    m = write_shards(tmp_path / "src", tmp_path / "out", samples_per_shard=2, workers=2,
                     compress_probability=0, max_resolution=45, progress=False)
    m2, got = read_set(tmp_path / "out")
    assert m == m2 and m["source"]["format"] == "imagefolder" and m["classes"] == ["ant", "bee"]
    assert [s["num_samples"] for s in m["shards"]] == [2, 2, 2, 1]
    assert [s["file"] for s in m["shards"]] == [f"shard-0000{i}.beton" for i in range(4)]
    assert [lab for _, lab in got] == [0, 0, 0, 1, 1, 1, 1]  # every sample once, in order
    for (image, _), (original, _) in zip(got[:6], expected, strict=True):
        np.testing.assert_array_equal(image, original)
    assert got[6][0].shape == (30, 45, 3)  # bee/big.png, 90 x 60 shrunk to a 45 px long side
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == \
        ["manifest.json"] + [s["file"] for s in m["shards"]]


def _cifar_folder(root: Path, per_batch: int, legacy_batch: str = "data_batch_3") -> list:
    folder, rows = root / "cifar-10-batches-py", []
    folder.mkdir(parents=True)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse",
             b"ship", b"truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names,
                                                         b"num_vis": 3072}))
    for b, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        images = np.stack([smooth(32, 32, 100 * b + r) for r in range(per_batch)])
        labels = [(3 * b + r) % 10 for r in range(per_batch)]
        data = images.transpose(0, 3, 1, 2).reshape(per_batch, 3072)  # R plane, G plane, B plane
        blob = pickle.dumps({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                             b"filenames": [b"x.png"] * per_batch}, protocol=2)
        if name == legacy_batch:  # the official files name numpy 1's module path
            blob = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        (folder / name).write_bytes(blob)
        rows += [(name, img, lab) for img, lab in zip(images, labels)]
    return rows


def test_cifar10_round_trip_both_splits(tmp_path):
    rows = _cifar_folder(tmp_path / "c", per_batch=3)
    m = write_shards(tmp_path / "c", tmp_path / "train", samples_per_shard=4, workers=2,
                     compress_probability=1, progress=False)
    assert m["source"]["format"] == "cifar10" and m["classes"][:2] == ["airplane", "automobile"]
    _, got = read_set(tmp_path / "train")
    train = [r for r in rows if r[0] != "test_batch"]
    assert len(got) == len(train) == 15
    assert [lab for _, lab in got] == [lab for _, _, lab in train]
    assert max(mean_error(g, r[1]) for (g, _), r in zip(got, train)) < JPEG_MEAN_ERROR
    m = write_shards(tmp_path / "c" / "cifar-10-batches-py", tmp_path / "test", split="test",
                     compress_probability=0, workers=1, progress=False)
    _, got = read_set(tmp_path / "test")
    assert m["source"]["split"] == "test"
    for (image, label), (_, original, lab) in zip(got, rows[15:], strict=True):
        np.testing.assert_array_equal(image, original)
        assert label == lab


def test_cifar10_pickles_may_not_run_code(tmp_path):
    _cifar_folder(tmp_path / "c", per_batch=1)

    class Evil:
        def __reduce__(self):
            return (shutil.rmtree, (str(tmp_path / "c"),))

    (tmp_path / "c" / "cifar-10-batches-py" / "data_batch_2").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(SourceError, match="data_batch_2.*shutil.rmtree is not allowed"):
        open_source(tmp_path / "c")
    assert (tmp_path / "c").exists()


def test_catsdogs_round_trip(tmp_path):
    src, expected = tmp_path / "train", {}
    for i, name in enumerate(["cat.1.jpg", "cat.2.jpg", "dog.1.jpg", "Dog.10.png"]):
        expected[name] = (smooth(16 + i, 24, i), 0 if name.lower().startswith("cat") else 1)
        save(src / name, expected[name][0], quality=95)
    save(src / "bird.1.jpg", smooth(8, 8, 9))
    (src / "readme.txt").write_text("hi")
    m = write_shards(src, tmp_path / "out", workers=1, progress=False)
    _, got = read_set(tmp_path / "out")
    assert m["source"]["format"] == "catsdogs" and m["classes"] == ["cat", "dog"]
    assert m["skipped"] == [{"input": str(src / "bird.1.jpg"),
                             "reason": "file name starts with neither cat. nor dog."}]
    assert m["ignored"] == {"non_image_files": 1, "by_extension": {".txt": 1}}
    by_shape = {img.shape: (img, lab) for img, lab in expected.values()}
    assert len(got) == len(by_shape) == 4
    for image, label in got:
        original, lab = by_shape[image.shape]
        assert label == lab and mean_error(image, original) < JPEG_MEAN_ERROR


def test_sample_source_round_trip(tmp_path):
    m = write_shards("sample:val", tmp_path / "out", samples_per_shard=200, workers=2,
                     progress=False)
    _, got = read_set(tmp_path / "out")
    ref = sample_set("val")
    assert m["source"] == {"format": "sample", "location": "sample:val:48", "split": "val"}
    assert [lab for _, lab in got] == ref.labels.tolist()
    errors = [mean_error(img, orig) for (img, _), orig in zip(got, ref.images)]
    assert max(errors) < JPEG_MEAN_ERROR and min(errors) == 0  # some JPEG, some raw


def write_shards(*args, **kwargs):
    """The writer in source order (most tests compare records by position)."""
    return shards.write_shards(*args, **{"shuffle_seed": None, **kwargs})


def test_samples_are_shuffled_across_shards_by_default(tmp_path):
    m = shards.write_shards("sample:val:4", tmp_path / "out", samples_per_shard=10, workers=1,
                            progress=False)
    _, got = read_set(tmp_path / "out")
    ref = sample_set("val", per_class=4)
    order = np.random.default_rng(0).permutation(len(ref.labels))
    assert m["writer"]["shuffle_seed"] == 0
    assert [lab for _, lab in got] == ref.labels[order].tolist() != ref.labels.tolist()
    errors = [mean_error(img, ref.images[i]) for (img, _), i in zip(got, order)]
    assert max(errors) < JPEG_MEAN_ERROR


# --- bad inputs ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    """One folder with every kind of awkward input; each good image has a unique size."""
    root = tmp_path_factory.mktemp("messy")
    src, expected = root / "src", {}
    rgb = smooth(10, 11, 0)
    save(src / "good" / "ok.JPG", rgb, quality=95)
    expected[(10, 11)] = ("exact", np.asarray(Image.open(src / "good" / "ok.JPG")))
    gray = smooth(12, 13, 1)[..., 0]
    save(src / "modes" / "gray.png", gray)
    expected[(12, 13)] = ("exact", np.repeat(gray[..., None], 3, axis=2))
    cmyk = Image.fromarray(smooth(14, 15, 2)).convert("CMYK")
    save(src / "modes" / "cmyk.jpg", cmyk, quality=95)
    expected[(14, 15)] = ("exact", np.asarray(Image.open(src / "modes" / "cmyk.jpg").convert("RGB")))
    pal = Image.fromarray(smooth(16, 17, 3)).convert("P", palette=Image.ADAPTIVE, colors=8)
    save(src / "modes" / "pal.png", pal)
    expected[(16, 17)] = ("exact", np.asarray(pal.convert("RGB")))
    rgba = np.zeros((18, 19, 4), np.uint8)
    rgba[:, :, 2], rgba[:6, :, 3], rgba[6:12, :, 3] = 200, 255, 128  # bottom third transparent
    save(src / "modes" / "rgba.png", rgba)
    want = np.full((18, 19, 3), 255, np.uint8)
    want[:6] = (0, 0, 200)
    want[6:12] = (127, 127, 228)  # half-transparent blue over white
    expected[(18, 19)] = ("close", want)
    la = np.zeros((20, 21, 2), np.uint8)
    la[..., 0], la[:10, :, 1] = 50, 255
    save(src / "modes" / "la.png", la)
    expected[(20, 21)] = ("exact", np.where(np.arange(20)[:, None, None] < 10, 50, 255)
                          .repeat(21, 1).repeat(3, 2).astype(np.uint8))
    deep = np.tile(np.array([0, 257 * 128, 65535], np.uint16), (22, 8))[:, :23]
    save(src / "modes" / "i16.png", Image.fromarray(deep))
    assert Image.open(src / "modes" / "i16.png").mode == "I;16"
    expected[(22, 23)] = ("exact", np.repeat((deep // 257).astype(np.uint8)[..., None], 3, 2))
    jpeg = io.BytesIO()
    Image.fromarray(smooth(40, 40, 4)).save(jpeg, "JPEG")
    (src / "bad").mkdir()
    (src / "bad" / "truncated.jpg").write_bytes(jpeg.getvalue()[:len(jpeg.getvalue()) // 2])
    (src / "bad" / "corrupt.png").write_bytes(np.random.default_rng(0).bytes(500))
    (src / "bad" / "empty.jpeg").write_bytes(b"")
    (src / "bad" / "notes.txt").write_text("not an image")
    (src / "good" / "labels.csv").write_text("a,b")
    (src / "good" / "LICENSE").write_text("x")
    m = write_shards(src, root / "out", samples_per_shard=3, workers=2, compress_probability=0,
                     progress=False)
    return src, root / "out", m, expected


def test_bad_images_are_skipped_with_their_reason(messy):
    src, _, m, _ = messy
    reasons = {Path(s["input"]).name: s["reason"] for s in m["skipped"]}
    assert sorted(reasons) == ["corrupt.png", "empty.jpeg", "truncated.jpg"]
    assert reasons["empty.jpeg"] == "empty file (0 bytes)"
    assert "UnidentifiedImageError" in reasons["corrupt.png"]
    assert "truncated" in reasons["truncated.jpg"].lower()
    assert all(str(src / "bad") in s["input"] for s in m["skipped"])


def test_non_image_files_are_ignored_and_counted(messy):
    m = messy[2]
    # 10 image-named files in chunks of 3: the all-bad first chunk makes no shard, the rest are
    # numbered on without a gap
    assert [(s["file"], s["num_samples"]) for s in m["shards"]] == [
        ("shard-00000.beton", 3), ("shard-00001.beton", 3), ("shard-00002.beton", 1)]
    assert m["ignored"] == {"non_image_files": 3,
                            "by_extension": {"(none)": 1, ".csv": 1, ".txt": 1}}


def test_a_very_thin_image_is_shrunk_not_fatal(tmp_path):
    save(tmp_path / "src" / "a" / "thin.png", smooth(3, 2000, 1))
    save(tmp_path / "src" / "a" / "ok.png", smooth(40, 50, 2))
    m = write_shards(tmp_path / "src", tmp_path / "out", max_resolution=500, workers=1,
                     compress_probability=0, progress=False)
    _, got = read_set(tmp_path / "out")
    assert m["num_samples"] == 2 and not m["skipped"]
    assert sorted(img.shape[:2] for img, _ in got) == [(1, 500), (40, 50)]


def test_odd_modes_become_8_bit_rgb(messy):
    _, out, m, expected = messy
    _, got = read_set(out)
    assert m["classes"] == ["bad", "good", "modes"]
    assert sorted(img.shape[:2] for img, _ in got) == sorted(expected)
    for image, label in got:
        kind, want = expected[image.shape[:2]]
        assert label == (1 if image.shape[:2] == (10, 11) else 2)
        if kind == "exact":  # raw storage: the stored pixels are exactly the conversion
            np.testing.assert_array_equal(image, want)
        else:  # alpha blending rounds
            assert np.abs(image.astype(int) - want).max() <= 1


@pytest.mark.parametrize("case,message", [
    ("missing", r"nope: no such file or directory"),
    ("empty", r"no images found .*2 non-image files ignored"),
    ("splits", r"holds split folders \['train', 'val'\].*--split train"),
    ("file", r"a\.txt: not a directory"),
])
def test_unusable_sources_fail_before_anything_is_written(tmp_path, case, message):
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "a" / "x.txt").write_text("x")
    (tmp_path / "empty" / "a" / "y.doc").write_text("y")
    save(tmp_path / "splits" / "train" / "c" / "1.png", smooth(4, 4, 0))
    (tmp_path / "splits" / "val").mkdir()
    (tmp_path / "a.txt").write_text("x")
    source = {"missing": "nope", "file": "a.txt"}.get(case, case)
    with pytest.raises(SourceError, match=message):
        write_shards(tmp_path / source, tmp_path / "out", progress=False,
                     source_format="imagefolder" if case != "missing" else None)
    assert not (tmp_path / "out").exists()


def test_a_source_of_only_broken_images_leaves_nothing(tmp_path):
    (tmp_path / "src" / "c").mkdir(parents=True)
    (tmp_path / "src" / "c" / "a.jpg").write_bytes(b"\xff\xd8garbage")
    (tmp_path / "src" / "c" / "b.png").write_bytes(b"")
    with pytest.raises(SourceError, match=r"none of its 2 images could be decoded"):
        write_shards(tmp_path / "src", tmp_path / "out", workers=1, progress=False)
    assert not (tmp_path / "out").exists()


def test_duplicate_destination_is_refused_then_overwritten(messy, tmp_path):
    src, out, m, _ = messy
    dest = tmp_path / "dest"
    shutil.copytree(out, dest)
    before = {p.name: p.read_bytes() for p in dest.iterdir()}
    with pytest.raises(ShardError, match=f"duplicate output location: {dest}.*--overwrite"):
        write_shards(src, dest, progress=False)
    (dest / "manifest.json").unlink()  # shards alone still count as a set
    with pytest.raises(ShardError, match="duplicate output location"):
        write_shards(src, dest, progress=False)
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == \
        {k: v for k, v in before.items() if k != "manifest.json"}
    (dest / "shard-00009.beton").write_bytes(b"stale")
    again = write_shards(src, dest, samples_per_shard=100, overwrite=True, progress=False,
                         workers=1)
    assert [s["file"] for s in again["shards"]] == ["shard-00000.beton"]
    assert sorted(p.name for p in dest.iterdir()) == ["manifest.json", "shard-00000.beton"]
    assert verify_shards(dest)["num_samples"] == m["num_samples"] == 7


def test_bad_settings_are_rejected(tmp_path):
    with pytest.raises(ShardError, match="jpeg_quality must be in 1..100"):
        write_shards("sample", tmp_path / "o", jpeg_quality=0)
    with pytest.raises(ShardError, match="samples_per_shard must be >= 1"):
        write_shards("sample", tmp_path / "o", samples_per_shard=0)
    assert not (tmp_path / "o").exists()


# --- verification --------------------------------------------------------------------------------

def test_verify_names_a_truncated_or_altered_shard(messy, tmp_path):
    _, out, m, _ = messy
    assert len(m["shards"]) == 3
    dest = tmp_path / "set"
    shutil.copytree(out, dest)
    assert verify_shards(dest) == m
    shard = dest / "shard-00001.beton"
    original = shard.read_bytes()
    shard.write_bytes(original[:-100])
    with pytest.raises(ShardError, match=r"shard-00001\.beton: .*truncated.*rewrite"):
        verify_shards(dest)
    altered = bytearray(original)
    altered[len(altered) // 2] ^= 0xFF
    shard.write_bytes(bytes(altered))
    with pytest.raises(ShardError, match=r"shard-00001\.beton: sha256 differs.*rewrite"):
        verify_shards(dest)
    shard.write_bytes(original)
    (dest / "manifest.json").unlink()
    with pytest.raises(ShardError, match="no manifest.json"):
        verify_shards(dest)


# --- the CLI -------------------------------------------------------------------------------------

def test_cli_data_write_and_verify(messy, tmp_path, capsys):
    src = messy[0]
    dest = tmp_path / "cli"
    assert main(["data", "write", str(src), str(dest), "--samples-per-shard", "4",
                 "--workers", "1", "--no-progress", "--max-resolution", "16"]) == 0
    out = capsys.readouterr().out
    assert "wrote 7 samples (3 classes) in 3 shards" in out and "skipped 3 bad inputs" in out
    manifest = json.loads((dest / "manifest.json").read_text())
    assert manifest["writer"]["max_resolution"] == 16
    assert main(["data", "verify", str(dest)]) == 0
    assert "3 shards, 7 samples" in capsys.readouterr().out
    with open(dest / "shard-00000.beton", "r+b") as f:
        f.truncate(1000)
    assert main(["data", "verify", str(dest)]) == 2
    assert "shard-00000.beton" in capsys.readouterr().err
    assert main(["data", "write", str(tmp_path / "missing"), str(tmp_path / "x")]) == 2
    assert "missing: no such file or directory" in capsys.readouterr().err


# --- executors and where tasks write -------------------------------------------------------------

def test_ray_executor_needs_ray_and_unknown_executors_are_rejected(tmp_path):
    with pytest.raises(ShardError, match=r"executor='ray' but Ray is not initialised.*ray\.init"):
        write_shards("sample", tmp_path / "o", executor="ray", progress=False)
    with pytest.raises(ShardError, match=r"executor must be one of auto, process, ray, got 'x'"):
        write_shards("sample", tmp_path / "o", executor="x", progress=False)
    assert not (tmp_path / "o").exists()


def test_a_task_checks_the_destination_exists_where_it_runs(tmp_path):
    from arinv.data.shards import _Task, _write_shard

    src = open_source("sample:val")
    task = _Task(0, src.refs[:2], src.load, {}, path=str(tmp_path / "elsewhere" / ".s.tmp"))
    with pytest.raises(ShardError, match=r"elsewhere: no such directory on .*same path on every"):
        _write_shard(task)


@pytest.mark.parametrize("seen", [None, 10])
def test_the_driver_refuses_to_publish_shards_it_cannot_see(tmp_path, seen):
    """A Ray task on another node wrote its shard to that node's disk, not a shared one."""
    from arinv.data.shards import _publish, _Task

    written, unseen = tmp_path / ".shard-00000.beton.tmp", tmp_path / ".shard-00001.beton.tmp"
    written.write_bytes(b"x" * 20)
    if seen is not None:
        unseen.write_bytes(b"x" * seen)
    tasks = [_Task(i, [], None, {}, path=str(p)) for i, p in enumerate([written, unseen])]
    results = [{"num_samples": 1, "bytes": 20, "host": "node-a"},
               {"num_samples": 1, "bytes": 20, "host": "node-b"}]
    state = "missing" if seen is None else "10 bytes"
    with pytest.raises(ShardError, match=rf"shard-00001\.beton\.tmp: written for shard 1 on node-b "
                       rf"\(20 bytes\), but {state} on .*same path on every node"):
        _publish(tmp_path, tasks, results)
    assert written.exists() and not (tmp_path / "shard-00000.beton").exists()  # nothing renamed


def test_data_write_and_the_ray_entrypoint_share_one_argument_list(capsys):
    from pipelines.write_shards import build_parser

    with pytest.raises(SystemExit):
        main(["data", "write", "--help"])
    cli_help = capsys.readouterr().out
    options = {a.dest: a.option_strings for a in build_parser()._actions}
    assert options["ray_address"] == ["--ray-address", "--address"]
    for dest, strings in options.items():
        assert all(s in cli_help for s in strings), dest


def test_gray_sample_set_hides_colour_and_grey_level(tmp_path):
    """The main job's task: three equal channels, every crop standardised to grey level 128 and
    contrast 48 (a crop that clips or is near flat ends up a little off), so grey level and
    contrast say little about the class (nearest class mean on (mean, std): 0.34 here, chance
    0.06; the colour set's colour statistics give 0.51) and a network has to read texture."""
    from arinv.data.sample import GRAY_PHOTOS

    m = write_shards("sample-gray:val:4", tmp_path / "out", samples_per_shard=64, workers=1,
                     progress=False)
    assert m["classes"] == list(GRAY_PHOTOS)
    assert m["source"]["location"] == "sample-gray:val:4"
    _, got = read_set(tmp_path / "out")
    assert [lab for _, lab in got] == sample_set("val", per_class=4, name="sample-gray"
                                                 ).labels.tolist()
    s = sample_set("train", per_class=24, name="sample-gray")
    assert (s.images[..., 0] == s.images[..., 1]).all() and (s.images[..., 1] ==
                                                             s.images[..., 2]).all()
    stats = np.stack([s.images[..., 0].mean((1, 2)), s.images[..., 0].std((1, 2))], 1)
    centres = np.stack([stats[s.labels == c].mean(0) for c in range(len(GRAY_PHOTOS))])
    nearest = np.argmin(((stats[:, None] - centres[None]) ** 2).sum(-1), 1)
    assert (np.abs(stats[:, 0] - 128) < 3).mean() > 0.9 and (stats[:, 1] < 48.5).all()
    assert (nearest == s.labels).mean() < 0.4
    with pytest.raises(ValueError, match="unknown bundled set 'sample-grey'"):
        sample_set("val", name="sample-grey")
