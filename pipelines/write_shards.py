"""Write a source as .beton shards + manifest with Ray tasks: the entrypoint for

    ray job submit --working-dir . -- python -m pipelines.write_shards SOURCE DEST [options]

Same arguments and code path as 'arinv data write' (pipelines.cli.data_write); the only difference is
that this always runs the shards as Ray tasks: on the cluster at --address / RAY_ADDRESS (set by
'ray job submit'), else on a local cluster it starts for the run.
"""

from __future__ import annotations

import argparse
import os
import sys

from pipelines.cli import DATA_EPILOG, add_data_write_arguments, data_write

DESCRIPTION = """\
Convert SOURCE into shard-00000.beton, ... and manifest.json (written last) in DEST, one Ray task
per shard. Each task writes its shard on its own node: for an s3:// DEST it uploads the shard
(checksum-verified) to a temporary key, and this driver copies every shard to its final key,
verified against the task's size and sha256, before it uploads the manifest. A local DEST (and a
local SOURCE folder) must be visible at the same path on every node, e.g. NFS; a task on a node
that cannot see DEST, or a shard this driver cannot see, is an error.

examples:
  ray job submit --working-dir . -- \\
      python -m pipelines.write_shards /nfs/imagenet s3://bucket/imagenet-train --split train
  python -m pipelines.write_shards sample /tmp/sample-shards    # on a local cluster, for the run

Every node needs the arinv dependencies (ffcv for writing, boto3 for S3) installed.
"""


def build_parser() -> argparse.ArgumentParser:
    return add_data_write_arguments(argparse.ArgumentParser(
        prog="python -m pipelines.write_shards", description=DESCRIPTION, epilog=DATA_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter))


def main(argv: list[str] | None = None) -> int:
    from arinv.data.beton import BetonError
    from arinv.data.shards import ShardError
    from arinv.data.sources import SourceError
    from arinv.data.storage import StorageError

    args = build_parser().parse_args(argv)
    args.ray_address = args.ray_address or os.environ.get("RAY_ADDRESS") or "local"
    try:
        return data_write(args)
    except (SourceError, ShardError, BetonError, StorageError) as e:
        print(f"write_shards: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
