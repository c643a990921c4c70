"""MAA-ICM shared library: data, detectors, codec, I/O and configs used by the stages."""

__version__ = "0.1.0"
