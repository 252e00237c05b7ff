"""Key layout of the official video-SALMONN S checkpoint for the TTT block (reference §5.2-§5.5).

After ``merge_and_unload`` the official model holds the block at ``model.ttt_layers.ttt.<name>`` and
the gate at ``model.ttt_gating.gating_alpha``; the PEFT adapter stores them as
``base_model.model.model.ttt_layers.ttt.<name>`` (``modules_to_save`` with the ``modules_to_save.default.``
infix removed, or kept by custom saves). :class:`~avmem.memory.ttt.TTTMemory` uses the short names
``ttt.<name>`` and ``gating_alpha``. avmem's own adapters add the learned step of the Muon rule (which
the official code does not have) as ``…ttt_layers.update.log_step``.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

_PREFIXES = ("base_model.model.", "model.")


def native_key(key: str) -> str | None:
    """Map an official / PEFT / native key to ``ttt.<name>``, ``update.<name>`` or ``gating_alpha``; None if
    unrelated.

    Keys of PEFT's frozen ``original_module`` copies are unrelated (the trained copy is the one under
    ``modules_to_save``).
    """
    if ".original_module." in key:
        return None
    k = key.replace(".modules_to_save.default.", ".")
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if k.startswith(prefix):
                k, changed = k[len(prefix):], True
    if k.startswith("ttt_layers.ttt."):
        return "ttt." + k[len("ttt_layers.ttt."):]
    if k == "ttt_gating.gating_alpha":
        return "gating_alpha"
    if k.startswith("ttt_layers.update."):
        return k[len("ttt_layers."):]
    if k.startswith(("ttt.", "update.")) or k == "gating_alpha":
        return k
    return None


def extract_ttt_tensors(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The TTT/gating tensors of ``state_dict`` under native names (other keys are ignored).

    Raises:
        ValueError: if two keys map to the same tensor.
    """
    out: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    for key, value in state_dict.items():
        name = native_key(key)
        if name is None:
            continue
        if name in out:
            raise ValueError(f"checkpoint holds '{name}' twice: as '{origin[name]}' and as '{key}'")
        out[name] = value
        origin[name] = key
    return out


def infer_config_fields(state_dict: Mapping[str, Tensor]) -> dict[str, int]:
    """Shape-determined :class:`~avmem.memory.ttt.TTTConfig` fields of a checkpoint's TTT block.

    Returns ``dim``, ``num_heads``, ``hidden_mult`` and, when the lag projections are absent,
    ``lag_distance=0``. The lag distance itself, the mini-batch, the base learning rate and the number
    of CG iterations are not stored in checkpoints (the released recipe: 1024, 1024, 0.1, and
    ``cg_max_iter=0`` in its script); pass them to ``TTTConfig`` yourself.

    Raises:
        ValueError: if the block's defining tensors are missing or inconsistent.
    """
    found = extract_ttt_tensors(state_dict)
    for name in ("ttt.wq.weight", "ttt.W1"):
        if name not in found:
            raise ValueError(f"checkpoint has no TTT tensor '{name}' (official 'ttt_layers.{name}')")
    dim = int(found["ttt.wq.weight"].shape[0])
    w1 = found["ttt.W1"]
    if w1.dim() != 3:
        raise ValueError(f"TTT tensor 'ttt.W1' must be [heads, head_dim, hidden], got {list(w1.shape)}")
    heads, head_dim, hidden = (int(v) for v in w1.shape)
    if heads * head_dim != dim or hidden % head_dim:
        raise ValueError(f"TTT tensor 'ttt.W1' {list(w1.shape)} does not fit dim {dim}")
    fields = {"dim": dim, "num_heads": heads, "hidden_mult": hidden // head_dim}
    if "ttt.lag_linear.weight" not in found:
        fields["lag_distance"] = 0
    return fields


def official_key(name: str) -> str:
    """Inverse of :func:`native_key` for a :class:`~avmem.memory.ttt.TTTMemory` state-dict name: the key an
    adapter stores (``base_model.model.model.ttt_layers.ttt.W1``, ``…ttt_gating.gating_alpha``)."""
    if name == "gating_alpha":
        return "base_model.model.model.ttt_gating.gating_alpha"
    if name.startswith(("ttt.", "update.")):
        return "base_model.model.model.ttt_layers." + name
    raise ValueError(f"'{name}' is not a TTT tensor name")
