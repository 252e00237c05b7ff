"""Shared test fixtures: the project's shared/ folder (real media, reference vectors) when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

TEST_DEVICE = os.environ.get("AVMEM_TEST_DEVICE", "cpu")
"""Where the suite runs its models: ``AVMEM_TEST_DEVICE=cuda python -m pytest`` runs it on a GPU. Models loaded
without an explicit device, sessions, readers and CLI commands (``--device auto`` reads ``AVMEM_DEVICE``) then
live there, while the data the tests make stays on the host, as a user's would."""
if TEST_DEVICE != "cpu":
    import avmem.model

    os.environ["AVMEM_DEVICE"] = TEST_DEVICE
    _defaults = list(avmem.model.load_model.__defaults__)
    _defaults[0] = TEST_DEVICE
    avmem.model.load_model.__defaults__ = tuple(_defaults)

SHARED = Path(os.environ.get("AVMEM_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def shared_path(*parts: str) -> Path:
    """A file under shared/, skipping the test with a clear reason when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not found: these tests need the project's shared/ folder beside the repository "
                    f"(or AVMEM_SHARED pointing at it)")
    return path


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
