"""Vision-tower work of several sessions in shared calls (one model, many streams).

The vision tower encodes every temporal patch (2 frames) on its own (its attention never crosses patches), so
the patches of several sessions can go through one call. The TTT memory and the token banks are per session:
each session carries its own fast weights, so their updates stay one call per session.
"""

from __future__ import annotations

import torch

from ..session import StreamSession


def absorb_together(sessions: list[StreamSession]) -> list[tuple[StreamSession, BaseException]]:
    """Absorb the whole chunks pending in ``sessions`` (all on one model; see ``StreamSession.stage_frames``).

    The sessions' chunks are grouped by frame size and encoded in shared tower calls of ``vision_patches``
    temporal patches (the smallest setting among the group); then each session runs TTT and its banks on its
    own patches (:meth:`StreamSession.absorb_patches`). Equal to each session absorbing alone (the reference,
    ``StreamSession.feed``; tests/test_serve_batching.py), up to the tower's floating-point batching.

    Returns:
        (session, exception) for every session whose absorb failed (that session is as it was before; the
        others are absorbed). A failing shared tower call raises, and leaves every session as it was.
    """
    if not sessions:
        return []
    model = sessions[0].model
    if any(s.model is not model for s in sessions):
        raise ValueError("absorb_together: the sessions must share one model")
    groups: dict[tuple[int, ...], list[tuple[StreamSession, int]]] = {}
    for s in sessions:
        n = s.ready_frames()
        if n:
            groups.setdefault(tuple(s.state.pending_frames[0][1].shape), []).append((s, n))
    failed: list[tuple[StreamSession, BaseException]] = []
    for members in groups.values():
        frames = torch.cat([s.pending_pixels(n) for s, n in members])
        step = 2 * min(s.settings.vision_patches for s, _ in members)
        with torch.no_grad():
            patches = [p for i in range(0, frames.shape[0], step)
                       for p in model.backbone.encode_frames(frames[i:i + step])]
        at = 0
        for s, n in members:
            mine, at = patches[at:at + n // 2], at + n // 2
            per_chunk = s.settings.chunk_frames // 2
            try:
                for c in range(0, len(mine), per_chunk):  # one TTT + bank update per chunk, as feed does
                    s.absorb_patches(mine[c:c + per_chunk])
            except Exception as exc:  # noqa: BLE001 - reported per session, the others go on
                failed.append((s, exc))
    return failed
