"""``arinv stylize``: multi-level universal style transfer (``arinv.downstream.stylize``) with
autoencoders from the registry; registered by ``pipelines.cli``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

STYLIZE_DESCRIPTION = """Universal style transfer (paper Sec. A3.1, A4.2): coarse to fine, each
level (default conv5, then conv2, then conv1) re-encodes the current image, matches the style
image's feature mean and covariance there (whitening and colouring transform) and decodes with
that level's generator.

Images keep their size and aspect ratio (padded for the encoder, cropped back). CONTENT and
STYLE are image files or folders: one style for every content image, or a style folder with as
many images as the content folder (paired in sorted name order). OUT is a file for one content
image, else a folder (written as <content>_<style>.png).

--models picks the autoencoders: an alias (standard, robust, ...) finds
models:/arinv-<ENCODER>-<LEVEL>-autoencoder@ALIAS for every level, as 'arinv train-generator'
registers them; or one registry URI per level, in --levels order.

examples:
  arinv stylize --content photo.jpg --style starry.jpg --out out.png                  # robust
  arinv stylize --content photos/ --style starry.jpg --out styled/ --models standard
  arinv stylize --content photo.jpg --style starry.jpg --out out.png --alpha 0.6 \\
      --levels conv5,conv2 --models models:/my-conv5@robust,models:/my-conv2@robust
  arinv stylize --content photo.jpg --style s.jpg --out o.png --encoder alexnet_small \\
      --tracking-uri sqlite:///arinv-quickstart/mlflow.db                          # toy models
"""

LEVELS = ("conv5", "conv2", "conv1")


def add_stylize_parser(sub) -> None:
    s = sub.add_parser("stylize", help="style transfer (WCT, conv5 -> conv2 -> conv1) of "
                       "images of any size with registered autoencoders",
                       description=STYLIZE_DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--content", required=True, metavar="C", help="an image file or a folder")
    s.add_argument("--style", required=True, metavar="S", help="an image file (for every "
                   "content image) or a folder with one style per content image")
    s.add_argument("--out", required=True, metavar="O", help="output file (one content image) "
                   "or folder")
    s.add_argument("--alpha", default="1.0", metavar="A", help="style strength in [0, 1]: one "
                   "value, or one per level (comma-separated, in --levels order); default 1")
    s.add_argument("--levels", default=",".join(LEVELS), metavar="L,L,...",
                   help="taps, coarse to fine (default conv5,conv2,conv1)")
    s.add_argument("--models", default="robust", metavar="ALIAS|URI,...",
                   help="an alias of the registered autoencoders (default robust), or one "
                   "models:/ URI per level")
    s.add_argument("--encoder", default="alexnet", help="the encoder architecture an alias "
                   "looks up (default alexnet; the toy models: alexnet_small)")
    s.add_argument("--gray-to-rgb", action="store_true", help="accept grayscale images as "
                   "RGB (refused by default: a colour style cannot be matched to one channel)")
    s.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    s.add_argument("--tracking-uri", default=None, metavar="URI",
                   help="MLflow registry; default $MLFLOW_TRACKING_URI or ./mlflow.db")


def model_refs(models: str, levels: list[str], encoder: str) -> list[str]:
    """One registry URI per level: an alias expands to the names ``train-generator`` gives."""
    from arinv.config import ConfigError

    refs = [m.strip() for m in models.split(",") if m.strip()]
    if len(refs) == 1 and ":" not in refs[0] and "/" not in refs[0]:
        return [f"models:/arinv-{encoder}-{lv}-autoencoder@{refs[0]}" for lv in levels]
    if len(refs) != len(levels):
        raise ConfigError(f"--models: give one alias, or one URI per level ({len(levels)}: "
                          f"{','.join(levels)}), got {len(refs)}")
    return refs


def load_levels(refs: list[str], levels: list[str], tracking_uri, device) -> dict:
    """level -> (encoder, generator), each pair checked to invert that level's tap before any
    image is read; a model of another kind or tap is refused naming its URI."""
    from arinv.checkpoint import CheckpointError
    from arinv.config import ConfigError
    from pipelines.autoencoders import autoencoder_files, load_pair
    from pipelines.errors import RegistryError

    pairs = {}
    for ref, lv in zip(refs, levels):
        enc_file, gen_file = autoencoder_files(ref, tracking_uri, None, purpose="stylize")
        try:
            encoder, generator, *_ = load_pair(enc_file, gen_file, layer=lv, device=device)
        except (ConfigError, CheckpointError) as e:
            raise RegistryError(f"{ref}: not an autoencoder of tap {lv} ({e})") from None
        pairs[lv] = (encoder, generator)
    return pairs


def run(args) -> int:
    import torch

    from arinv.config import ConfigError
    from arinv.downstream import stylize
    from arinv.train.runtime import resolve_device
    from pipelines.image_files import image_files, read_rgb, write_png
    from pipelines.tracking import checked_uri, default_tracking_uri

    levels = [lv.strip() for lv in args.levels.split(",") if lv.strip()]
    bad = [lv for lv in levels if lv not in LEVELS]
    if not levels or bad:
        raise ConfigError(f"--levels: taps among {','.join(LEVELS)}, got {args.levels!r}")
    try:
        alphas = [float(a) for a in args.alpha.split(",")]
    except ValueError:
        raise ConfigError(f"--alpha: numbers in [0, 1], got {args.alpha!r}") from None
    if len(alphas) == 1:
        alphas = alphas * len(levels)
    if len(alphas) != len(levels) or not all(0 <= a <= 1 for a in alphas):
        raise ConfigError(f"--alpha: one value in [0, 1], or one per level ({len(levels)}), "
                          f"got {args.alpha!r}")
    contents = image_files(args.content, "--content")
    styles = image_files(args.style, "--style")
    if len(styles) not in (1, len(contents)):
        raise ConfigError(f"--style: {len(styles)} images for {len(contents)} content images; "
                          "give one style, or one per content image")
    out = Path(args.out)
    if len(contents) > 1 and out.suffix:
        raise ConfigError(f"--out {args.out}: {len(contents)} content images need a folder")
    # read every image first: a bad file is reported before any model is loaded
    content_images = [read_rgb(f, gray_to_rgb=args.gray_to_rgb) for f in contents]
    style_images = [read_rgb(f, gray_to_rgb=args.gray_to_rgb) for f in styles]
    uri = checked_uri(args.tracking_uri) if args.tracking_uri else default_tracking_uri()
    device = resolve_device(args.device)
    refs = model_refs(args.models, levels, args.encoder)
    pairs = load_levels(refs, levels, uri, device)
    alpha = dict(zip(levels, alphas))
    written, start = [], time.perf_counter()
    for i, (f, x) in enumerate(zip(contents, content_images)):
        j = i if len(styles) > 1 else 0
        try:
            y = stylize(x[None], [style_images[j]], pairs, alpha=alpha, levels=levels)[0]
        except ValueError as e:
            raise ConfigError(f"{f} with style {styles[j]}: {e}") from None
        dest = out if len(contents) == 1 and out.suffix else \
            out / f"{f.stem}_{styles[j].stem}.png"
        write_png(y, dest)
        written.append(dest)
        print(f"{f.name} x {styles[j].name} -> {dest} ({x.shape[2]} x {x.shape[1]} px)")
    print(f"stylized {len(written)} image(s) in {time.perf_counter() - start:.1f} s with "
          f"{', '.join(refs)} (alpha {args.alpha}, levels {','.join(levels)}, "
          f"{torch.device(device)})")
    return 0
