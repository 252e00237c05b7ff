"""Where uploaded files wait for their decoder: a folder the server owns, cleared of stale files at start.

With ``--snapshot-dir D`` uploads go to ``D/.uploads`` (not a session id, so never read as a snapshot); everything in
it at start is stale (restored sessions never hold an upload: they are "detached"), left by a server killed with
``kill -9``, and is deleted. Without a snapshot folder each server makes a private folder
``$TMPDIR/avmem-uploads-<pid>-*`` (mode 0700) and removes it when it stops; at start the folders of this user whose
process is gone are removed.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

UPLOADS = ".uploads"
PRIVATE_PREFIX = "avmem-uploads-"
_PRIVATE = re.compile(r"^avmem-uploads-(\d+)-")


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (one of another user counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_private(tmp: Path) -> list[Path]:
    """Remove the private upload folders under ``tmp`` that belong to this user and to a process that is gone.
    Returns the folders removed."""
    removed = []
    for entry in tmp.iterdir() if tmp.is_dir() else []:
        m = _PRIVATE.match(entry.name)
        if not m or int(m.group(1)) <= 0 or entry.is_symlink() or not entry.is_dir():
            continue
        try:
            if entry.stat().st_uid != os.getuid() or _alive(int(m.group(1))):
                continue
        except OSError:
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def open_folder(snapshot_dir: str | None) -> tuple[Path, bool]:
    """The server's upload folder, made and cleared of stale files; ``(folder, private)`` where ``private``
    means the folder is this process's own (remove it at stop with :func:`close_folder`)."""
    if snapshot_dir:
        folder = Path(snapshot_dir) / UPLOADS
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        for stale in folder.iterdir():
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
        return folder, False
    remove_stale_private(Path(tempfile.gettempdir()))
    return Path(tempfile.mkdtemp(prefix=f"{PRIVATE_PREFIX}{os.getpid()}-")), True


def close_folder(folder: Path, private: bool) -> None:
    """At stop: a private folder is removed with what is left in it (a snapshot folder's is cleared at start)."""
    if private:
        shutil.rmtree(folder, ignore_errors=True)
