"""Data: the bundled sample set, transforms and local (non-Ray) batch iterators."""
