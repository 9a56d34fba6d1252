"""fsanet: frequency self-attention (FsaNet) and its peers for semantic segmentation, as a reproducible study."""

__version__ = "0.1.0"
