"""Local batch iterators (no Ray): the bundled sample set or an ImageFolder tree.

Both yield ``(uint8 N x 3 x R x R, int64 N)`` batches, the same contract as the Ray Data stream,
so the training loop cannot tell them apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch

from .sample import sample_set
from .transforms import apply_per_sample, eval_transform, train_transform


class TensorBatches:
    """Shuffled (per epoch, seeded) mini-batches over in-memory uint8 images."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *,
                 transform, shuffle: bool, seed: int = 0, drop_last: bool = False):
        self.images, self.labels = images, labels
        self.batch_size, self.transform = batch_size, transform
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield apply_per_sample(self.images[idx], self.transform), self.labels[idx]


def _sample_split(split: str, per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list]:
    s = sample_set(split, per_class=per_class, seed=seed)
    return torch.from_numpy(s.images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(s.labels), s.classes


def local_loaders(data_cfg, resolution: int, batch_size: int, seed: int = 0, *,
                  augment: bool = True):
    """(train batches, val batches, class names) for ``data_cfg.source``; without ``augment``
    training images get the evaluation crop."""
    if data_cfg.source == "sample":
        xt, yt, classes = _sample_split("train", data_cfg.train_per_class, seed)
        xv, yv, _ = _sample_split("val", data_cfg.val_per_class, seed)
        tf = train_transform(resolution, (data_cfg.crop_min_scale, 1)) if augment else eval_transform(resolution)
        train = TensorBatches(xt, yt, batch_size, transform=tf,
                              shuffle=True, seed=seed, drop_last=len(yt) > batch_size)
        val = TensorBatches(xv, yv, batch_size, transform=eval_transform(resolution),
                            shuffle=False)
        return train, val, classes
    return _folder_loaders(Path(data_cfg.source).expanduser(), resolution, batch_size,
                           data_cfg.num_workers, augment, data_cfg.crop_min_scale)


def _folder_loaders(root: Path, resolution: int, batch_size: int, num_workers: int,
                    augment: bool, crop_min_scale: float):
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    def folder(split, tf):
        return ImageFolder(str(root / split), transform=v2.Compose([v2.PILToTensor(), tf]))

    train_ds = folder("train", train_transform(resolution, (crop_min_scale, 1)) if augment else eval_transform(resolution))
    val_ds = folder("val", eval_transform(resolution))
    if train_ds.classes != val_ds.classes:
        raise ValueError(f"{root}: train/ and val/ have different class folders")
    mk = lambda ds, shuffle: torch.utils.data.DataLoader(  # noqa: E731
        ds, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
        drop_last=shuffle, persistent_workers=num_workers > 0)
    return mk(train_ds, True), mk(val_ds, False), train_ds.classes
