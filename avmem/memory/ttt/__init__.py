"""Test-time-training memory of video-SALMONN S: TTT_HF, TTT_SGD and TTT_Muon fast-weight layers."""

from .config import TTTConfig
from .fast_mlp import FastWeights
from .layer import TTTBlockParameters, TTTMemory, flop_count, parameter_count
from .rope import official_positions
from .state import TTTState
from .update import HFUpdate, MuonUpdate, SGDUpdate, UpdateRule

__all__ = [
    "FastWeights",
    "HFUpdate",
    "MuonUpdate",
    "SGDUpdate",
    "TTTBlockParameters",
    "TTTConfig",
    "TTTMemory",
    "TTTState",
    "UpdateRule",
    "flop_count",
    "official_positions",
    "parameter_count",
]
