"""Crash-safe file replacement, shared by session snapshots and the evaluation runner."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

_UMASK = os.umask(0o022)
os.umask(_UMASK)


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file under ``root`` to disk, then every folder (deepest first, ``root`` last), so a rename of
    ``root`` made after this is durable with its whole content. Raises OSError when a file cannot be flushed."""
    root = Path(root)
    for path in sorted(root.rglob("*"), key=lambda p: -len(p.parts)):
        if path.is_dir():
            fsync_dir(path)
        elif path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
    fsync_dir(root)


def atomic_write(path: str | Path, write: Callable[[Path], Any], fsync: bool = False, suffix: str = ".tmp") -> None:
    """Replace ``path`` atomically: ``write(tmp)`` fills a fresh temporary file in the same folder (unique per call,
    ending in ``suffix``); it is flushed to disk when ``fsync`` is set, then renamed over ``path`` and, with ``fsync``,
    the folder is synced too. Readers see the old file or the new one, never a part: a crash or a full disk at any
    point leaves the previous ``path`` as it was. On failure the temporary file is removed and the error raised."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)
        write(tmp)
        if fsync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        fsync_dir(path.parent)
