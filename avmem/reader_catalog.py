"""Names and traits of the built-in session readers, importable without torch.

The CLI checks ``--reader`` (and the options that only some readers take) against this table before anything
heavy is imported, so a mistyped name fails in well under a second. The readers themselves live in
:mod:`avmem.memory.kv.readers` (a registry filled by importing its modules, which needs torch and transformers);
``tests/test_cli_fail_fast.py`` keeps this table equal to that registry, names and traits.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReaderTraits:
    """What the CLI needs to know of a reader: see :class:`avmem.memory.kv.readers.Reader`."""

    uses_budgets: bool = False
    supports_incremental: bool = False


READERS: dict[str, ReaderTraits] = {
    "full": ReaderTraits(supports_incremental=True),
    "infinipot": ReaderTraits(uses_budgets=True),
    "omnimem": ReaderTraits(uses_budgets=True),
    "pd": ReaderTraits(),
    "recent": ReaderTraits(uses_budgets=True),
    "rekv": ReaderTraits(),
    "similarity": ReaderTraits(uses_budgets=True),
    "similarity-merge": ReaderTraits(uses_budgets=True),
    "snapkv": ReaderTraits(),
}


def reader_traits(name: str) -> ReaderTraits:
    """The traits of the built-in reader ``name``.

    Raises:
        ValueError: one line listing the reader names.
    """
    if name not in READERS:
        raise ValueError(f"--reader must be one of {', '.join(READERS)}, got {name!r}")
    return READERS[name]
