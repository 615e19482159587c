"""Data: the bundled sample set, transforms, local (non-Ray) batch iterators, and the data plane:
sources (ImageFolder, CIFAR-10, cats-vs-dogs, sample) -> FFCV .beton shards + manifest
(``shards``), the .beton format read with numpy alone (``beton``), and local/S3 storage."""
