"""pipelines.ffcv_loader over real shard sets: every sample once per epoch across ranks, the batch
format, eval pixels against a centre crop made without ffcv and against the Ray Data path's
decoder, per-epoch orders, and the errors.

Sample identity comes from ``with_index=True`` (global indices), checked against the labels
stored at those indices and, with eval transforms, against (label, pixel checksum) pairs that
do not depend on the index bookkeeping at all.
"""

import collections
import hashlib
import json
import os
import re
import shutil
import threading

import numpy as np
import pytest
import torch

pytest.importorskip("ffcv")

from arinv.data.beton import BetonReader, decode, write_beton
from arinv.data.shards import ShardError, read_manifest, write_shards
from pipelines.ffcv_loader import ffcv_batches

pytestmark = pytest.mark.slow  # JIT-compiles ffcv pipelines (seconds each) and writes shards

R = 64


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory):
    """40 sample photographs (8 classes x 5) in shards of 16, 16 and 8 (otherwise
    pipelines.trainer.write_sample_shards' settings): 40 is no multiple of world x batch size,
    and a rank's batches span shards."""
    dest = tmp_path_factory.mktemp("ffcv") / "train"
    write_shards("sample:train:5", dest, samples_per_shard=16, max_resolution=500,
                 jpeg_quality=95, compress_probability=1.0, progress=False, executor="process")
    return dest


def _records(folder):
    recs = []
    for shard in read_manifest(folder)["shards"]:
        with BetonReader.from_path(folder / shard["file"]) as reader:
            recs += reader.records(0, reader.num_samples)
    return recs


def _batches(folder, **kw):
    args = {"rank": 0, "world": 1, "batch_size": 4, "resolution": R, "train": False,
            "epoch": 0, **kw}
    return list(ffcv_batches(str(folder), **args))


def _identities(batches):
    return collections.Counter((int(label), hashlib.sha1(image.numpy().tobytes()).hexdigest())
                               for images, labels, *_ in batches
                               for image, label in zip(images, labels))


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_three_ranks_read_every_sample_exactly_once_per_epoch(shard_set, train):
    labels = np.array([r.label for r in _records(shard_set)])
    whole = _identities(_batches(shard_set))
    for epoch in range(2):
        seen, identities = [], collections.Counter()
        for rank in range(3):
            batches = _batches(shard_set, rank=rank, world=3, train=train, epoch=epoch,
                               with_index=True)
            sizes = [len(b[1]) for b in batches]
            assert set(sizes[:-1]) == {4} and 1 <= sizes[-1] <= 4
            for _, lab, index in batches:
                assert lab.tolist() == labels[index.numpy()].tolist()
            seen += torch.cat([b[2] for b in batches]).tolist()
            identities += _identities(batches)
        assert sorted(seen) == list(range(len(labels)))
        if not train:
            assert identities == whole  # independent of the indices: same pixels, same labels


def test_more_ranks_than_samples(shard_set):
    n = read_manifest(shard_set)["num_samples"]
    per_rank = [_batches(shard_set, rank=r, world=n + 8, train=True, with_index=True)
                for r in range(n + 8)]
    seen = [i for batches in per_rank for b in batches for i in b[2].tolist()]
    assert sorted(seen) == list(range(n))
    assert all(not batches for batches in per_rank[n:])


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_batches_are_uint8_nchw_with_int64_labels(shard_set, train):
    batches = _batches(shard_set, batch_size=7, train=train)
    assert [len(b[1]) for b in batches] == [7] * 5 + [5]
    for images, labels in batches:
        assert images.dtype == torch.uint8 and images.shape == (len(labels), 3, R, R)
        assert images.is_contiguous() and labels.dtype == torch.int64 and labels.ndim == 1
    if not train:
        stored = [r.label for r in _records(shard_set)]
        assert torch.cat([b[1] for b in batches]).tolist() == stored


def _centre_crop(rec):
    """ffcv's eval geometry (crop 224/256 of the short side, centred; INTER_AREA resize) from
    arinv's own decoder."""
    import cv2

    image = decode(rec.payload, rec.mode, rec.width, rec.height)
    side = int(224 / 256 * min(rec.width, rec.height))
    top, left = (rec.height - side) // 2, (rec.width - side) // 2
    crop = image[top:top + side, left:left + side]
    return cv2.resize(crop, (R, R), interpolation=cv2.INTER_AREA).transpose(2, 0, 1)


def _ray_eval(recs):
    from pipelines.ray_data import decode_batch

    batch = {"payload": [r.payload for r in recs], "mode": np.array([r.mode for r in recs]),
             "width": np.array([r.width for r in recs]),
             "height": np.array([r.height for r in recs]),
             "label": np.array([r.label for r in recs]), "index": np.arange(len(recs))}
    return decode_batch(batch, split_transform="eval", resolution=R)["image"]


def _pairwise_diff(a, b):
    """Mean absolute pixel difference of every image in ``a`` to every image in ``b``."""
    return np.abs(a[:, None].astype(np.int16) - b[None].astype(np.int16)).mean(axis=(2, 3, 4))


def _check_eval_pixels(folder, **kw):
    recs = _records(folder)
    batches = _batches(folder, **kw)  # all held at once: batches own their memory
    ours = torch.cat([b[0] for b in batches]).numpy()
    same = np.arange(len(recs))
    crop = _pairwise_diff(ours, np.stack([_centre_crop(r) for r in recs]))
    assert crop.diagonal().max() < 3, crop.diagonal()  # JPEG decoders differ slightly
    assert (crop.argmin(axis=1) == same).all()
    # The Ray path resizes, then crops, from a DCT-downscaled decode: close, not equal.
    ray = _pairwise_diff(ours, _ray_eval(recs))
    assert ray.diagonal().mean() < 8, ray.diagonal()
    assert (ray.argmin(axis=1) == same).all()


def test_eval_pixels_match_the_ray_data_decoder(shard_set):
    _check_eval_pixels(shard_set)


def test_shards_of_different_image_sizes(tmp_path):
    """The compiled pipeline is reused across shards; each shard's decode buffers must fit its
    own largest image (shard 0 holds small images, shard 1 large ones)."""
    import cv2

    from arinv.data.sources import open_source

    src = open_source("sample:train:1")
    photos = [src.load(ref)[0] for ref in src.refs]
    sizes = [[(96, 80), (80, 96), (90, 90), (120, 84)],
             [(400, 300), (300, 420), (480, 360), (350, 350)]]
    shards = []
    for s, shard_sizes in enumerate(sizes):
        items = [(cv2.resize(photos[4 * s + i], size, interpolation=cv2.INTER_AREA), 4 * s + i)
                 for i, size in enumerate(shard_sizes)]
        path = tmp_path / f"shard-{s:05d}.beton"
        write_beton(path, items, jpeg_quality=95, compress_probability=1.0)
        shards.append({"file": path.name, "num_samples": len(items),
                       "bytes": path.stat().st_size})
    manifest = {"version": 1, "num_samples": 8, "shards": shards}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    _check_eval_pixels(tmp_path, batch_size=3)  # a configuration no other test compiled


def test_train_order_changes_per_epoch_and_repeats_for_the_same_seed(shard_set):
    def epoch(e, seed=0):
        batches = _batches(shard_set, train=True, epoch=e, seed=seed, with_index=True)
        return [torch.cat(parts) for parts in zip(*batches)]

    (images0, labels0, order0), (images1, labels1, order1) = epoch(0), epoch(1)
    assert sorted(order0.tolist()) == sorted(order1.tolist())
    assert order0.tolist() != order1.tolist() and labels0.tolist() != labels1.tolist()
    assert epoch(0)[2].tolist() == order0.tolist()  # every rank derives the same permutation
    assert epoch(0, seed=1)[2].tolist() != order0.tolist()
    # random crops: the same sample looks different in the two epochs
    same = images1[torch.argsort(order1)][order0]
    assert (same != images0).flatten(1).any(1).float().mean() > 0.9


@pytest.mark.timeout(120)
def test_an_abandoned_epoch_stops_its_thread_and_leaves_the_next_epoch_whole(shard_set):
    from ffcv.loader.epoch_iterator import EpochIterator

    def loading_threads():
        return [t for t in threading.enumerate() if isinstance(t, EpochIterator)]

    batches = ffcv_batches(str(shard_set), rank=0, world=1, batch_size=4, resolution=R,
                           train=True, epoch=5)
    next(batches)
    assert loading_threads()  # done with its shard, it waits to queue its end marker
    batches.close()
    assert not loading_threads()
    assert sum(len(b[1]) for b in _batches(shard_set, train=True, epoch=6)) == 40


def _copy(shard_set, tmp_path):
    dest = tmp_path / "train"
    shutil.copytree(shard_set, dest)
    return dest


def test_missing_shard_names_the_file(shard_set, tmp_path):
    dest = _copy(shard_set, tmp_path)
    (dest / "shard-00001.beton").unlink()
    with pytest.raises(ShardError, match=r"shard-00001\.beton: missing.*data\.loader=ray"):
        ffcv_batches(str(dest), rank=0, world=1, batch_size=4, resolution=R, train=True, epoch=0)


def test_truncated_shard_names_the_file(shard_set, tmp_path):
    dest = _copy(shard_set, tmp_path)
    path = dest / "shard-00002.beton"
    os.truncate(path, path.stat().st_size - 4096)
    with pytest.raises(ShardError, match=r"shard-00002\.beton: \d+ bytes but the manifest "
                                         r"says \d+ \(truncated"):
        ffcv_batches(str(dest), rank=0, world=1, batch_size=4, resolution=R, train=True, epoch=0)


@pytest.mark.timeout(120)  # ffcv's own iterator would hang: fail instead
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_corrupt_sample_raises_instead_of_hanging(shard_set, tmp_path):
    """A flipped metadata byte (JPEG marked raw) keeps the size right: ffcv's loading thread
    raises, and ffcv's iterator would wait for it forever."""
    from ffcv.reader import Reader
    from ffcv.types import HeaderType

    path = _copy(shard_set, tmp_path) / "shard-00001.beton"
    reader = Reader(str(path))
    row = reader.metadata.dtype
    mode = (HeaderType.itemsize + reader.field_descriptors.nbytes + 3 * row.itemsize
            + row.fields["f0"][1] + row["f0"].fields["mode"][1])
    with open(path, "r+b") as f:
        f.seek(mode)
        f.write(bytes([1]))
    with pytest.raises(RuntimeError, match=r"shard-00001\.beton: ffcv's loading thread failed"):
        _batches(path.parent)


@pytest.mark.parametrize("where", ["s3://bucket/shards/train", "missing"])
def test_remote_or_missing_folder_is_refused(tmp_path, where):
    where = where if "://" in where else str(tmp_path / where)
    with pytest.raises(ShardError, match=re.escape(where) + ".*for s3:// use data.loader=ray"):
        ffcv_batches(where, rank=0, world=1, batch_size=4, resolution=R, train=False, epoch=0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="rank"):
        ffcv_batches("/nowhere", rank=2, world=2, batch_size=4, resolution=R, train=True,
                     epoch=0)
