"""SCAN trainer: SimCLR pretext, nearest-neighbor mining, SCAN clustering, self-labeling."""

__version__ = "0.1.0"
