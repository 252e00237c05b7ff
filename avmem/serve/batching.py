"""Vision-tower and audio-encoder work of several sessions in shared calls (one model, many streams).

The vision tower encodes every temporal patch (2 frames) on its own (its attention never crosses patches), and the
audio encoder every 30 s piece on its own, so the patches and pieces of several sessions can go through one call.
The TTT memory and the token banks are per session: each session carries its own fast weights, so their updates
stay one call per session.
"""

from __future__ import annotations

import numpy as np
import torch

from ..session import StreamSession


def absorb_audio_together(sessions: list[StreamSession], max_pieces: int = 16) -> list[tuple[StreamSession,
                                                                                        BaseException]]:
    """Encode the whole 30 s audio pieces pending in ``sessions`` (see ``StreamSession.stage_audio``) in shared
    audio-encoder calls of at most ``max_pieces`` pieces, then put each session's tokens in its audio bank
    (:meth:`StreamSession.absorb_audio`). Equal to each session encoding alone (``feed``), up to the encoder's
    floating-point batching. Returns (session, exception) for the sessions whose bank update failed; a failing
    encoder call raises and leaves every session as it was."""
    members = [(s, n) for s in sessions if (n := s.ready_audio())]
    if not members:
        return []
    audio = members[0][0].model.audio
    samples = np.concatenate([s.state.pending_audio[:n] for s, n in members])
    with torch.no_grad():
        tokens = audio.encode(samples, max_batch_pieces=max_pieces)
    failed, at = [], 0
    for s, n in members:
        count = audio.num_tokens(n)
        try:
            s.absorb_audio(tokens[at:at + count], n)
        except Exception as exc:  # noqa: BLE001 - reported per session, the others go on
            failed.append((s, exc))
        at += count
    return failed


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
