"""Helpers for tests that damage shard sets on purpose (importable from unit and integration
tests: pytest puts this folder, the home of the top-level conftest, on sys.path)."""

import json

from arinv.data import storage
from arinv.data.beton import BetonReader


def damage_sample(split_dir, sample: int, rehash: bool):
    """Overwrite the middle of a JPEG sample's scan with an end-of-image marker (same size)."""
    manifest = json.loads((split_dir / "manifest.json").read_text())
    shard = split_dir / manifest["shards"][0]["file"]
    with BetonReader.from_path(shard) as r:
        ptr, size = int(r._ptr[sample]), int(r._size[sample])
    with open(shard, "r+b") as f:
        f.seek(ptr + size // 2)
        f.write(b"\xff\xd9")
    if rehash:
        manifest["shards"][0]["sha256"] = storage.sha256_file(shard)
        (split_dir / "manifest.json").write_text(json.dumps(manifest))
    return shard
