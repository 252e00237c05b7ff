"""Helpers shared by the Video-MME, LVBench, VideoEval-Pro and LongVideoBench loaders (no benchmark here).

Reading the published tables (parquet through the optional ``pyarrow``, JSON arrays, JSONL), converting
pre-lettered options ("A. text") into bare option texts, parsing SRT subtitles and choosing subtitle cues by
stream time, and grouped accuracy tables.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable

from . import LETTERS, AnnotationDefect, BenchQuestion

PARQUET_HINT = "pip install 'avmem[eval]' to read parquet"


def read_rows(path: Path, what: str) -> list[dict[str, Any]]:
    """The records of a ``.parquet``, ``.json`` (array, or an object holding one array) or ``.jsonl`` file.

    Raises:
        AnnotationDefect: unreadable file, not a list of objects, or parquet without pyarrow installed.
    """
    path = Path(path)
    if not path.is_file():
        raise AnnotationDefect(f"{path}: {what} annotation file not found")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise AnnotationDefect(f"{path}: {PARQUET_HINT}") from None
        try:
            return pq.read_table(path).to_pylist()
        except Exception as exc:
            raise AnnotationDefect(f"{path}: unreadable parquet ({exc})") from None
    text = path.read_text(encoding="utf-8-sig")
    if suffix == ".jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise AnnotationDefect(f"{path}:{n}: not JSON ({exc.msg})") from None
    else:
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise AnnotationDefect(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise AnnotationDefect(f"{path}: not a {what} annotation (expected a list of objects)")
    return rows


def annotation_file(path: Path, names: Iterable[str]) -> Path:
    """``path`` itself, or for a folder the first of ``names`` (file names inside it) that exists.

    Raises:
        AnnotationDefect: a folder holding none of them (named by the first).
    """
    if not path.is_dir():
        return path
    names = list(names)
    found = next((path / n for n in names if (path / n).is_file()), None)
    if found is None:
        raise AnnotationDefect(f"{path}: no {names[0]} in this folder")
    return found


def need(row: dict[str, Any], keys: Iterable[str], item: str) -> None:
    """Raise one line naming ``item`` when ``row`` lacks any of ``keys``."""
    missing = [k for k in keys if k not in row or row[k] is None]
    if missing:
        raise AnnotationDefect(f"{item}: missing field(s) {', '.join(missing)}")


def question(where: str, **kwargs: Any) -> BenchQuestion:
    """A :class:`BenchQuestion` whose validation error names the file too (``where`` prefixes the message)."""
    try:
        return BenchQuestion(**kwargs)
    except AnnotationDefect as exc:
        raise AnnotationDefect(f"{where} {exc}") from None


_PREFIX = re.compile(r"^\s*\(?([A-G])\s*[.):]\s*")


def strip_letter_prefixes(options: list[str], item: str) -> list[str]:
    """["A. x", "B. y"] -> ["x", "y"]: the prefixes must be A, B, ... in order (else an AnnotationDefect)."""
    out = []
    for k, opt in enumerate(options):
        m = _PREFIX.match(str(opt))
        if not m or m.group(1) != LETTERS[k]:
            raise AnnotationDefect(f"{item}: option {k + 1} {opt!r} does not start with '{LETTERS[k]}.'")
        out.append(str(opt)[m.end():].strip())
    return out


def all_prefixed(options: list[str]) -> bool:
    """Whether every option carries its letter prefix in order (A., B., ...)."""
    return all((m := _PREFIX.match(str(o))) is not None and m.group(1) == LETTERS[k] for k, o in enumerate(options))


_SRT_TIME = re.compile(r"(\d+):(\d{1,2}):(\d{1,2})[,.](\d{1,3})")
_TAG = re.compile(r"<[^>]*>")


def srt_seconds(stamp: str) -> float:
    m = _SRT_TIME.fullmatch(stamp.strip())
    if not m:
        raise ValueError(f"bad SRT time {stamp!r}")
    h, mi, s, ms = m.groups()
    return int(h) * 3600 + int(mi) * 60 + int(s) + int(ms.ljust(3, "0")) / 1000


def parse_srt(path: Path) -> list[tuple[float, float, str]]:
    """The cues of an SRT file as (start s, end s, text) in file order; tags such as ``<font ...>`` stripped,
    the lines of one cue joined with a space, empty cues dropped.

    Raises:
        AnnotationDefect: a cue without a valid ``start --> end`` line.
    """
    text = Path(path).read_text(encoding="utf-8-sig", errors="replace").replace("\r\n", "\n").replace("\r", "\n")
    cues = []
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = [ln for ln in block.split("\n") if ln.strip()]
        if not lines:
            continue
        k = next((i for i, ln in enumerate(lines) if "-->" in ln), None)
        if k is None:
            raise AnnotationDefect(f"{path}: subtitle block {lines[0]!r} has no 'start --> end' line")
        try:
            start, end = (srt_seconds(p.split()[0] if p.split() else p) for p in lines[k].split("-->"))
        except ValueError as exc:
            raise AnnotationDefect(f"{path}: {exc}") from None
        body = " ".join(_TAG.sub("", ln).strip() for ln in lines[k + 1:])
        body = " ".join(body.split())
        if body:
            cues.append((start, end, body))
    return cues


def cues_until(cues: list[tuple[float, float, str]], t: float | None) -> list[str]:
    """Texts of the cues that have started by stream time ``t`` (all when None), in order, consecutive
    repeats merged (YouTube-style overlapping cues repeat lines)."""
    out: list[str] = []
    for start, _end, text in cues:
        if (t is None or start <= t) and (not out or out[-1] != text):
            out.append(text)
    return out


def cues_at(cues: list[tuple[float, float, str]], times: Iterable[float]) -> list[str]:
    """Texts of the cues whose span [start, end) covers one of the frame ``times``, in cue order, each once."""
    times = sorted(times)
    out = []
    for start, end, text in cues:
        if any(start <= t < end for t in times) and text not in out:
            out.append(text)
    return out


def accuracy(values: list[bool]) -> float | None:
    """Fraction correct (None for an empty group: no number is better than a made-up one)."""
    return sum(values) / len(values) if values else None


def grouped(rows: list[dict], key) -> dict[str, float | None]:
    """{group: accuracy} over ``rows`` (each row's ``correct`` a bool), groups from ``key(row)`` (a str or a
    list of str: a row counts toward each), in first-seen order."""
    groups: dict[str, list[bool]] = {}
    for r in rows:
        names = key(r)
        for name in ([names] if isinstance(names, str) else names):
            groups.setdefault(str(name), []).append(bool(r["correct"]))
    return {k: accuracy(v) for k, v in groups.items()}
