"""Device and dtype resolution of ``--device`` / ``--dtype`` (avmem.runtime)."""

from __future__ import annotations

import pytest
import torch

from avmem.runtime import resolve_device, resolve_dtype


def test_auto_is_the_environment_then_a_gpu_then_the_cpu(monkeypatch):
    monkeypatch.delenv("AVMEM_DEVICE", raising=False)
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == want and resolve_device(None).type == want
    monkeypatch.setenv("AVMEM_DEVICE", "auto")
    assert resolve_device("auto").type == want
    monkeypatch.setenv("AVMEM_DEVICE", "cpu")
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name,needle", [("foo", "unknown device"), ("meta", "unknown device"),
                                         ("cuda:99", "CUDA"), ("mps", "MPS")])
def test_bad_or_absent_devices_are_one_clear_error(name, needle):
    if name == "mps" and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        pytest.skip("an MPS device is present")
    with pytest.raises(ValueError, match=needle):
        resolve_device(name)


def test_dtypes():
    assert resolve_dtype("auto") is None and resolve_dtype(None) is None
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype("float32") is torch.float32
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("int8")
