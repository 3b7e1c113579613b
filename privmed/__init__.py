"""privmed: privacy-preserving deep learning on multi-site medical images."""

__version__ = "0.1.0"
