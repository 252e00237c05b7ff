"""Per-layer KV budgets (OmniMem, reference official_omnimem.md §1.7, §2).

A budget file is a JSON list with one entry per LLM layer: an int (a modality-agnostic top-k over all
non-text tokens) or an ``[audio, visual]`` pair (separate top-k per modality); lists may mix the two.
Text tokens are always kept on top of the budget.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LayerBudget:
    """Budget of one layer: ``total`` (modality-agnostic) or ``audio`` and ``visual`` (separate)."""

    total: int | None = None
    audio: int | None = None
    visual: int | None = None

    @property
    def per_modality(self) -> bool:
        return self.total is None

    def tokens(self) -> int:
        """Most non-text tokens this layer may hold."""
        return self.total if self.total is not None else self.audio + self.visual

    def to_official(self) -> int | list[int]:
        return self.total if self.total is not None else [self.audio, self.visual]


@dataclass(frozen=True)
class BudgetSchedule:
    """Budgets of every layer, index = layer."""

    layers: tuple[LayerBudget, ...]

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, layer: int) -> LayerBudget:
        return self.layers[layer]

    def total_tokens(self) -> int:
        """Sum over layers of the non-text tokens held."""
        return sum(b.tokens() for b in self.layers)

    @classmethod
    def uniform(cls, num_layers: int, tokens: int | tuple[int, int]) -> "BudgetSchedule":
        """The same budget (int, or (audio, visual)) in every layer."""
        entry = list(tokens) if isinstance(tokens, tuple) else tokens
        return cls.from_official([entry] * num_layers, num_layers)

    @classmethod
    def from_official(cls, data: object, num_layers: int | None = None, source: str = "budget") -> "BudgetSchedule":
        """Parse the official format; ``num_layers`` (the LLM's) must match when given.

        Raises:
            ValueError: naming the first bad layer entry, or the layer-count mismatch.
        """
        if not isinstance(data, list) or not data:
            raise ValueError(f"{source}: expected a non-empty JSON list with one entry per layer")
        if num_layers is not None and len(data) != num_layers:
            raise ValueError(f"{source}: {len(data)} layer entries, but the model has {num_layers} layers")
        layers = []
        for i, entry in enumerate(data):
            if _is_int(entry):
                if entry <= 0:
                    raise ValueError(f"{source}: layer {i}: budget must be > 0, got {entry}")
                layers.append(LayerBudget(total=int(entry)))
            elif isinstance(entry, list) and len(entry) == 2 and all(_is_int(v) for v in entry):
                audio, visual = (int(v) for v in entry)
                if audio < 0 or visual < 0 or audio + visual == 0:
                    raise ValueError(f"{source}: layer {i}: [audio, visual] budgets must be >= 0 and not both 0, "
                                     f"got {entry}")
                layers.append(LayerBudget(audio=audio, visual=visual))
            else:
                raise ValueError(f"{source}: layer {i}: expected an int or an [audio, visual] pair of ints, "
                                 f"got {entry!r}")
        return cls(tuple(layers))

    @classmethod
    def load(cls, path: str | Path, num_layers: int | None = None) -> "BudgetSchedule":
        """Read an official budget file."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{path}: no such budget file")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: invalid JSON ({exc})") from None
        return cls.from_official(data, num_layers, source=str(path))

    def to_official(self) -> list:
        return [b.to_official() for b in self.layers]

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_official()))
        return path


@dataclass(frozen=True)
class LayerSignals:
    """Per-layer statistics the budget formula uses (averaged over chunks and videos).

    Attributes:
        entropy_all, entropy_audio, entropy_visual: attention entropy over all / audio / visual keys.
        cos_audio, cos_visual: mean cosine similarity of adjacent tokens of that modality.
    """

    entropy_all: tuple[float, ...]
    entropy_audio: tuple[float, ...]
    entropy_visual: tuple[float, ...]
    cos_audio: tuple[float, ...]
    cos_visual: tuple[float, ...]


def compute_budgets(signals: LayerSignals, per_layer_mean: int, temperature: float = 0.2, av_ratio: float = 2.0,
                    clip: tuple[float, float] | None = (0.5, 1.5)) -> BudgetSchedule:
    """The released offline formula (official_omnimem.md §2.2).

    r = 1 - cos per modality, r_all = (r_a + r_v) / 2; b = entropy * sqrt(r) per modality and overall;
    layer shares p = softmax(b_all / temperature); B_l = p_l * per_layer_mean * L; modality split
    w_a = b_a / (b_a + rho b_v), w_v = rho b_v / (b_a + rho b_v) with rho = ``av_ratio``; then, with
    ``clip`` = (lo, hi), B_v in [lo, hi] * per_layer_mean and B_a in that range / rho.

    Raises:
        ValueError: inconsistent lengths, non-finite values, or bad parameters.
    """
    n = len(signals.entropy_all)
    fields = (signals.entropy_all, signals.entropy_audio, signals.entropy_visual, signals.cos_audio, signals.cos_visual)
    if n == 0 or any(len(f) != n for f in fields):
        raise ValueError("layer signals must be non-empty and of equal length")
    if any(not math.isfinite(v) for f in fields for v in f):
        raise ValueError("layer signals contain NaN or Inf")
    if per_layer_mean <= 0 or temperature <= 0 or av_ratio <= 0:
        raise ValueError(f"per_layer_mean, temperature and av_ratio must be > 0, got {per_layer_mean}, "
                         f"{temperature}, {av_ratio}")
    total = per_layer_mean * n
    b_all, b_a, b_v = [], [], []
    for li in range(n):
        r_a = max(0.0, 1.0 - signals.cos_audio[li])
        r_v = max(0.0, 1.0 - signals.cos_visual[li])
        b_a.append(signals.entropy_audio[li] * math.sqrt(r_a))
        b_v.append(signals.entropy_visual[li] * math.sqrt(r_v))
        b_all.append(signals.entropy_all[li] * math.sqrt((r_a + r_v) / 2))
    top = max(b / temperature for b in b_all)
    weights = [math.exp(b / temperature - top) for b in b_all]
    norm = sum(weights)
    layers = []
    for li in range(n):
        budget = weights[li] / norm * total
        denom = b_a[li] + av_ratio * b_v[li]
        w_a = b_a[li] / denom if denom > 0 else 0.5
        audio, visual = budget * w_a, budget * (1 - w_a)
        if clip is not None:
            lo, hi = clip
            visual = min(max(visual, lo * per_layer_mean), hi * per_layer_mean)
            audio = min(max(audio, lo * per_layer_mean / av_ratio), hi * per_layer_mean / av_ratio)
        layers.append(LayerBudget(audio=int(audio), visual=int(visual)))
    return BudgetSchedule(tuple(layers))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
