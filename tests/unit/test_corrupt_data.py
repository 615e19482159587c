"""Bad data inside shard sets: a JPEG damaged after writing (its shard's checksum updated, as if
the writer had stored it) is skipped with a warning naming shard and index and counted, or
fails the run with data.on_corrupt=fail; a shard altered in place at the same size is refused
by its checksum before anything is read from it."""

import logging
import os

import pytest

from arinv.config import EncoderTrainConfig, load_config
from arinv.data.reader import ShardBatches, write_sample_shards
from arinv.data.shards import ShardError
from shardtools import damage_sample as _damage


@pytest.fixture
def shard_set(tmp_path):
    return write_sample_shards(tmp_path / "sample", 2, 1, progress=False)  # 16 + 8 crops


def test_a_corrupt_sample_is_skipped_named_and_counted(shard_set, caplog):
    shard = _damage(shard_set / "train", 3, rehash=True)
    batches = ShardBatches(str(shard_set / "train"), 8, resolution=32, train=False)
    with caplog.at_level(logging.WARNING, logger="arinv.data"):
        n = sum(len(y) for _, y in batches)
    assert n == 15 and batches.skipped == 1
    assert f"{shard} sample 3: JPEG payload: damaged JPEG (Corrupt JPEG data: premature end" in caplog.text


def test_on_corrupt_fail_stops_naming_shard_and_index(shard_set):
    shard = _damage(shard_set / "train", 3, rehash=True)
    batches = ShardBatches(str(shard_set / "train"), 8, resolution=32, train=False,
                           on_corrupt="fail")
    with pytest.raises(ShardError, match=rf"{shard} sample 3: JPEG payload: damaged JPEG"):
        list(batches)


def test_a_shard_altered_in_place_is_refused_before_reading(shard_set):
    batches = ShardBatches(str(shard_set / "train"), 8, resolution=32, train=False)
    assert sum(len(y) for _, y in batches) == 16  # verified once, remembered
    shard = _damage(shard_set / "train", 3, rehash=False)
    st = shard.stat()
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # as any later write does
    with pytest.raises(ShardError, match="sha256 differs from the manifest"):
        list(batches)


def test_a_training_run_counts_corrupt_samples_per_epoch(shard_set, tmp_path):
    from arinv.train.local import fit_local

    _damage(shard_set / "train", 5, rehash=True)
    cfg = load_config(EncoderTrainConfig, "tiny-sample-standard", [
        f"data.shards={shard_set}", "optim.epochs=2", "optim.batch_size=8", "eval.every=0",
        "eval.images=8", "eval.pgd_eps=[0.5]", "eval.pgd_steps=1", "runtime.device=cpu"])
    hist = fit_local(cfg, tmp_path / "run", progress=False)["history"]
    assert [h["corrupt_samples"] for h in hist] == [1, 1] and all(h["images"] == 15 for h in hist)
    with pytest.raises(ShardError, match="sample 5"):
        fit_local(load_config(EncoderTrainConfig, "tiny-sample-standard", [
            f"data.shards={shard_set}", "data.on_corrupt=fail", "optim.batch_size=8"]),
            tmp_path / "strict", progress=False)
