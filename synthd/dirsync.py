"""Renames made durable: a folder's entries fsynced, so a power cut keeps the rename.

A rename is atomic at once, but it is in the folder's metadata, which reaches the
disk only when the folder itself is fsynced. Every rename that is part of a promise
(a claim, a move to done/, a closed shard) is followed by one of these.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(folder: Path) -> None:
    """Make the renames into or out of ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dirs(*folders: Path) -> None:
    """``fsync_dir`` each folder once, in order."""
    for folder in dict.fromkeys(folders):
        fsync_dir(folder)
