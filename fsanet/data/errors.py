"""The errors of :mod:`fsanet.data`, in a leaf module that every dataset, the image I/O and the download
code import (it imports nothing of the package). Each message names the file or URL and the fix."""

from __future__ import annotations

__all__ = ["ChecksumError", "DataError", "DownloadError"]


class DataError(ValueError):
    """A dataset file or folder is missing or malformed. The message names the file and the fix."""


class DownloadError(ValueError):
    """A download failed (HTTP error, broken connection, unknown file)."""


class ChecksumError(DownloadError):
    """A file's digest differs from the expected one. The message shows both."""
