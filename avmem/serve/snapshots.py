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

from ..fsutil import fsync_dir, fsync_tree

SERVED_FORMAT = "avmem-served/1"
_GEN = re.compile(r"^gen-(\d{10})$")
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def valid_id(session_id: str) -> bool:
    """Whether ``session_id`` may name a session folder (1-64 of A-Z a-z 0-9 _ -: never a path)."""
    return isinstance(session_id, str) and bool(_ID.match(session_id))


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
        fsync_tree(tmp)
        final = folder / f"gen-{number:010d}"
        os.rename(tmp, final)
        fsync_dir(folder)
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


MAX_MEMBERS = 10_000  # a snapshot holds a handful of files


def _checked_members(tar: tarfile.TarFile, max_bytes: int) -> list[tarfile.TarInfo]:
    """The archive's members, each checked: a regular file or a folder (no links, devices or FIFOs), a relative
    name under ``gen`` without ``..`` or empty parts; at most :data:`MAX_MEMBERS` and ``max_bytes`` in all.

    Raises:
        ValueError: the first member that breaks a rule, named.
    """
    members, total = [], 0
    for m in tar:
        members.append(m)
        if len(members) > MAX_MEMBERS:
            raise ValueError(f"the archive holds more than {MAX_MEMBERS} members")
        if not (m.isreg() or m.isdir()):
            raise ValueError(f"archive member {m.name!r}: not a regular file or folder")
        parts = m.name.split("/")
        if m.name.endswith("/") and m.isdir():
            parts = parts[:-1]
        if (m.name.startswith("/") or "\\" in m.name or "\0" in m.name or parts[0] != "gen"
                or any(p in ("", ".", "..") for p in parts)):
            raise ValueError(f"archive member {m.name!r}: not a relative name under gen/")
        total += m.size
        if m.size < 0 or total > max_bytes:
            raise ValueError(f"the archive's members hold more than {max_bytes} bytes")
    return members


def _extract(tar: tarfile.TarFile, members: list[tarfile.TarInfo], dest: Path) -> None:
    """Write checked members under ``dest``: folders and plain files only, with this process's default modes
    (no owners, modes or times taken from the archive; tarfile's extraction filters are not relied on)."""
    for m in members:
        target = dest.joinpath(*m.name.rstrip("/").split("/"))
        if m.isdir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        src = tar.extractfile(m)
        if src is None:
            raise ValueError(f"archive member {m.name!r}: unreadable")
        with src, open(target, "xb") as out:  # "x": a second member of the same name is refused
            shutil.copyfileobj(src, out)
            if out.tell() != m.size:
                raise ValueError(f"archive member {m.name!r}: truncated")


def import_generation(root: str | Path, session_id: str, archive: bytes) -> Path:
    """Unpack an :func:`export_generation` archive as the next generation of ``session_id`` under ``root``
    (an uncompressed tar; every member checked first: regular files and folders only, relative names under ``gen/``
    without ``..``, at most the archive's own size in all; extracted in a temporary folder, renamed into place
    once complete). Returns the generation folder (read it with :func:`read_served` and ``StreamSession.load``,
    which check it).

    Raises:
        ValueError: bad session id, a refused member, or an archive without a ``gen/`` folder (tarfile.TarError
        when unreadable).
    """
    if not valid_id(session_id):
        raise ValueError(f"bad session id {session_id!r}")
    folder = Path(root) / session_id
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder))
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
            try:
                _extract(tar, _checked_members(tar, max_bytes=len(archive)), tmp)
            except FileExistsError as exc:
                raise ValueError(f"the archive holds {Path(exc.filename).name!r} twice") from None
        if not (tmp / "gen").is_dir():
            raise ValueError("the archive holds no gen/ folder")
        fsync_tree(tmp / "gen")
        gens = generations(folder)
        final = folder / f"gen-{(gens[-1][0] + 1 if gens else 1):010d}"
        os.rename(tmp / "gen", final)
        fsync_dir(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
