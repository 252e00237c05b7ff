"""Crash-safe session snapshots in ``--snapshot-dir``.

Layout: ``<dir>/<session id>/gen-<NNNNNNNNNN>/`` holds ``session`` (written by ``StreamSession.save``) and
``served.json`` (what the server knows about the session: owner, source, settings). A generation is written in a
temporary folder ``<dir>/<id>/.tmp-*``, every file and the folder are fsync'ed, and the folder is renamed to its
final name (atomic); only then are older generations removed. A crash at any moment leaves the previous complete
generation; ``kill -9`` loses at most what came after the last snapshot.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tarfile
import tempfile
from pathlib import Path

SERVED_FORMAT = "avmem-served/1"
_GEN = re.compile(r"^gen-(\d{10})$")
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def valid_id(session_id: str) -> bool:
    """Whether ``session_id`` may name a session folder (1-64 of A-Z a-z 0-9 _ -: never a path)."""
    return isinstance(session_id, str) and bool(_ID.match(session_id))


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
    if not valid_id(session_id):
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
        if not folder.is_dir() or not valid_id(folder.name):
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
    if valid_id(session_id):
        shutil.rmtree(Path(root) / session_id, ignore_errors=True)


def export_generation(generation: str | Path) -> bytes:
    """A generation folder as an uncompressed tar archive (member names under ``gen/``): how a session moves
    to another server (:func:`import_generation` there)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(Path(generation), arcname="gen")
    return buf.getvalue()


def import_generation(root: str | Path, session_id: str, archive: bytes) -> Path:
    """Unpack an :func:`export_generation` archive as the next generation of ``session_id`` under ``root``
    (extracted in a temporary folder with tarfile's ``data`` filter: no absolute paths, links out of the folder or
    device files; renamed into place once complete). Returns the generation folder (read it with
    :func:`read_served` and ``StreamSession.load``, which check it).

    Raises:
        ValueError: bad session id, or an archive without a ``gen/`` folder (tarfile.TarError when unreadable).
    """
    if not valid_id(session_id):
        raise ValueError(f"bad session id {session_id!r}")
    folder = Path(root) / session_id
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder))
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r") as tar:
            tar.extractall(tmp, filter="data")
        if not (tmp / "gen").is_dir():
            raise ValueError("the archive holds no gen/ folder")
        _fsync_tree(tmp / "gen")
        gens = generations(folder)
        final = folder / f"gen-{(gens[-1][0] + 1 if gens else 1):010d}"
        os.rename(tmp / "gen", final)
        _fsync(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
