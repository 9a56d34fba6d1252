"""fsanet: frequency self-attention (FsaNet) and peers in semantic segmentation, a reproducible study."""

__version__ = "0.1.0"
