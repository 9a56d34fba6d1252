"""The errors of :mod:`fsanet.data.download`, in a module of their own so that a dataset module with
its own download client (Cityscapes) can raise them while the download code calls that client."""

from __future__ import annotations

__all__ = ["ChecksumError", "DownloadError"]


class DownloadError(ValueError):
    """A download failed (HTTP error, broken connection, unknown file)."""


class ChecksumError(DownloadError):
    """A file's digest differs from the expected one. The message shows both."""
