"""coins: fine-grained image embeddings learned from coarse labels (CoIns, ICCV 2021)."""

__version__ = "0.1.0"
