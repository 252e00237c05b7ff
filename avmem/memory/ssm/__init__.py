"""State-space memory layers (Mamba-2) compared with the TTT block."""

from .mamba2 import Mamba2Config, Mamba2Memory, Mamba2State, ssd_chunked, ssd_reference

__all__ = ["Mamba2Config", "Mamba2Memory", "Mamba2State", "ssd_chunked", "ssd_reference"]
