"""cloudq: a cluster task queue for transcoding farms and GPU/ML batch work."""

__version__ = "0.1.0"
