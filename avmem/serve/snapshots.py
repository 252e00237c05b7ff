"""Crash-safe session snapshots in ``--snapshot-dir``.

Layout: ``<dir>/<session id>/gen-<NNNNNNNNNN>/`` holds ``session`` (written by ``StreamSession.save``) and
``served.json`` (what the server knows about the session: owner, source, settings). A generation is written in a
temporary folder ``<dir>/<id>/.tmp-*``, every file and the folder are fsync'ed, and the folder is renamed to its
final name (atomic); only then are older generations removed. A crash at any moment leaves the previous complete
generation; ``kill -9`` loses at most what came after the last snapshot.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

SERVED_FORMAT = "avmem-served/1"
_GEN = re.compile(r"^gen-(\d{10})$")
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*"), key=lambda p: -len(p.parts)):
        _fsync(path)
    _fsync(root)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def generations(folder: Path) -> list[tuple[int, Path]]:
    """Complete generations of one session folder, oldest first."""
    found = []
    for p in folder.iterdir() if folder.is_dir() else []:
        m = _GEN.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def write_snapshot(root: str | Path, session_id: str, session, served: dict) -> Path:
    """Save ``session`` (a StreamSession) and ``served`` (JSON-able) as the next generation of ``session_id``.

    Returns the generation folder. Raises OSError on disk errors (the previous generation stays)."""
    if not _ID.match(session_id):
        raise ValueError(f"bad session id {session_id!r}")
    folder = Path(root) / session_id
    folder.mkdir(parents=True, exist_ok=True)
    gens = generations(folder)
    number = gens[-1][0] + 1 if gens else 1
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder))
    try:
        session.save(tmp / "session")
        (tmp / "served.json").write_text(json.dumps({"format": SERVED_FORMAT, **served}))
        _fsync_tree(tmp)
        final = folder / f"gen-{number:010d}"
        os.rename(tmp, final)
        _fsync(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for _, old in gens:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest(root: str | Path) -> list[tuple[str, Path]]:
    """(session id, newest complete generation) for every session folder under ``root``; leftover temporary
    folders of interrupted writes are removed."""
    out = []
    root = Path(root)
    if not root.is_dir():
        return out
    for folder in sorted(root.iterdir()):
        if not folder.is_dir() or not _ID.match(folder.name):
            continue
        for tmp in folder.glob(".tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)
        gens = generations(folder)
        if gens:
            out.append((folder.name, gens[-1][1]))
    return out


def read_served(generation: Path) -> dict:
    """The ``served.json`` of a generation, checked.

    Raises:
        ValueError: missing, not JSON, or not this format.
    """
    try:
        served = json.loads((generation / "served.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{generation}: unreadable served.json ({type(exc).__name__})") from None
    if not isinstance(served, dict) or served.get("format") != SERVED_FORMAT:
        raise ValueError(f"{generation}: not an avmem server snapshot (format {served.get('format') if isinstance(served, dict) else None!r})")
    return served


def remove(root: str | Path, session_id: str) -> None:
    """Delete every generation of a session (it was closed)."""
    if _ID.match(session_id):
        shutil.rmtree(Path(root) / session_id, ignore_errors=True)
