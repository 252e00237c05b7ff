"""The Qwen-VL pixel budget: smart_resize against transformers' own code, and PixelBudget validation."""

from __future__ import annotations

import ast
import importlib.util
import math
import random
from pathlib import Path

import pytest

from avmem.media import MediaError, PixelBudget, smart_resize


def _reference_smart_resize():
    """transformers' Qwen2-VL ``smart_resize``, compiled from its source (the module itself needs torchvision)."""
    spec = importlib.util.find_spec("transformers")
    if spec is None or spec.origin is None:
        pytest.skip("transformers is not installed")
    path = Path(spec.origin).parent / "models" / "qwen2_vl" / "image_processing_qwen2_vl.py"
    if not path.exists():
        pytest.skip(f"{path} not found in this transformers version")
    tree = ast.parse(path.read_text())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "smart_resize")
    namespace = {"math": math}
    exec(compile(ast.Module([fn], []), str(path), "exec"), namespace)
    return namespace["smart_resize"]


def test_matches_transformers_on_random_sizes():
    reference = _reference_smart_resize()
    rng = random.Random(0)
    budgets = [(28, 784, 176400), (32, 784, 176400), (28, 56 * 56, 14 * 14 * 4 * 1280), (32, 1024, 32 * 32 * 768)]
    checked = 0
    while checked < 3000:
        h, w = rng.randint(1, 6000), rng.randint(1, 6000)
        if max(h, w) / min(h, w) > 200:
            continue
        for factor, lo, hi in budgets:
            assert smart_resize(h, w, factor, lo, hi) == reference(h, w, factor, lo, hi), (h, w, factor, lo, hi)
        checked += 1


@pytest.mark.parametrize("size, factor, expected", [
    ((1080, 1920), 32, (288, 544)), ((1080, 1920), 28, (308, 560)),
    ((640, 360), 32, (544, 288)), ((1386, 3026), 32, (256, 608)),
    ((240, 427), 28, (252, 420)), ((2, 2), 32, (32, 32)), ((64, 96), 32, (64, 96)),
])
def test_known_targets_at_the_video_salmonn_budget(size, factor, expected):
    out = smart_resize(*size, factor=factor, min_pixels=784, max_pixels=176400)
    assert out == expected
    assert out[0] % factor == 0 and out[1] % factor == 0 and out[0] * out[1] <= 176400


def test_extreme_aspect_ratio_is_rejected():
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 2500)
    with pytest.raises(ValueError, match="positive"):
        smart_resize(0, 10)


def test_pixel_budget_validation_and_passthrough():
    assert PixelBudget(max_pixels=None).target(123, 457) == (123, 457)
    assert PixelBudget().target(720, 1280) == (288, 544)
    for kwargs, needle in (({"factor": 0}, "factor"), ({"max_pixels": 100}, "max_pixels"),
                           ({"min_pixels": 0}, "min_pixels"), ({"min_pixels": 10 ** 6}, "min_pixels")):
        with pytest.raises(MediaError, match=needle):
            PixelBudget(**kwargs)
