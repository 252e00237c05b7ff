"""Fixed-size token memory: hard capacity, documented kept tokens, official step semantics."""

from __future__ import annotations

import pytest
import torch

from avmem.memory.bank import (
    BankState,
    NextSimilarityDiscard,
    PreviousSimilarityDiscard,
    SegmentMerge,
    TokenBank,
)

POLICIES = [NextSimilarityDiscard(), PreviousSimilarityDiscard(), SegmentMerge()]


def unit(*v):
    return torch.tensor(v, dtype=torch.float32)


def five_tokens():
    """a, a' (cos 0.995 to a), b, c, c' (cos 0.9999 to c); b and c orthogonal to the rest."""
    a = unit(1, 0, 0, 0)
    a2 = unit(1, 0.1, 0, 0)
    b = unit(0, 0, 1, 0)
    c = unit(0, 0, 0, 1)
    c2 = unit(0, 0.01, 0, 1)
    return torch.stack([a, a2, b, c, c2]), torch.arange(10, 15)


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: type(p).__name__)
@pytest.mark.parametrize("step", [None, 1, 3, 7])
def test_never_exceeds_capacity_and_ids_stay_ordered(policy, step):
    bank = TokenBank(capacity=16, policy=policy, step=step)
    state, next_id = None, 0
    g = torch.Generator().manual_seed(0)
    for k in [1, 5, 16, 17, 40, 3, 1, 64]:
        tokens = torch.randn(k, 2, 8, generator=g)
        state = bank.append(state, tokens, torch.arange(next_id, next_id + k))
        next_id += k + 2  # ids may skip (e.g. dropped frames)
        assert len(state) <= 16 and state.tokens.shape[1:] == (2, 8)
        assert bool((state.ids[1:] > state.ids[:-1]).all())
    assert len(state) == 16


def test_previous_convention_keeps_documented_tokens():
    """Official: keep the N least similar to their predecessor; token 0 always dropped; of a pair the later goes."""
    tokens, ids = five_tokens()
    state = TokenBank(3, PreviousSimilarityDiscard()).append(None, tokens, ids)
    assert state.ids.tolist() == [11, 12, 13]  # a' (0.995) beats c' (0.9999); a is always dropped
    assert torch.equal(state.tokens, tokens[[1, 2, 3]])


def test_next_convention_keeps_documented_tokens():
    """Paper: drop the n - N tokens most similar to their next; the last token is always kept."""
    tokens, ids = five_tokens()
    state = TokenBank(3, NextSimilarityDiscard()).append(None, tokens, ids)
    assert state.ids.tolist() == [11, 12, 14]  # a (~a') and c (~c') dropped, the later of each pair kept


def test_segment_merge_averages_segments_at_the_following_id_and_drops_the_tail():
    tokens, ids = five_tokens()
    state = TokenBank(3, SegmentMerge()).append(None, tokens, ids)
    # boundaries S = [1, 2, 3]: segments [0,1), [1,2), [2,3) at ids 11, 12, 13; [3, 5) dropped
    assert state.ids.tolist() == [11, 12, 13]
    torch.testing.assert_close(state.tokens, tokens[[0, 1, 2]])
    near = torch.stack([unit(1, 0, 0, 0), unit(1, 0.01, 0, 0), unit(0, 1, 0, 0), unit(0, 1.01, 0, 0),
                        unit(0, 0, 1, 0), unit(0, 0, 0, 1)])
    state = TokenBank(2, SegmentMerge()).append(None, near, torch.arange(6))
    s = torch.nn.functional.normalize(near, dim=-1)
    sims = (s[:-1] * s[1:]).sum(-1)
    bounds = torch.sort(torch.topk(-sims, 2).indices + 1).values
    expected = torch.stack([near[: bounds[0]].mean(0), near[bounds[0]: bounds[1]].mean(0)])
    torch.testing.assert_close(state.tokens, expected)
    assert state.ids.tolist() == bounds.tolist()


def official_recursive(tokens, ids, memory, step, select):
    """Spec of the official loop (reference §2.8): start from the first `memory`, absorb `step` at a time."""
    held_t, held_i = tokens[:memory], ids[:memory]
    for s in range(memory, tokens.shape[0], step):
        held_t = torch.cat([held_t, tokens[s:s + step]])
        held_i = torch.cat([held_i, ids[s:s + step]])
        held_t, held_i = select(held_t, held_i, memory)
    return held_t, held_i


@pytest.mark.parametrize("policy", [PreviousSimilarityDiscard(), SegmentMerge()], ids=lambda p: type(p).__name__)
def test_chunk_appends_follow_the_official_step_loop(policy):
    """forward_ttt_layers concatenates each chunk to the memory and runs recursive_attention on it."""
    g = torch.Generator().manual_seed(1)
    bank = TokenBank(capacity=20, policy=policy, step=6)
    ref_t, ref_i, state, start = None, None, None, 0
    for k in (9, 25, 4, 13):
        chunk = torch.randn(k, 5, generator=g)
        cids = torch.arange(start, start + k)
        start += k
        state = bank.append(state, chunk, cids)
        ref_t = chunk if ref_t is None else torch.cat([ref_t, chunk])
        ref_i = cids if ref_i is None else torch.cat([ref_i, cids])
        if ref_t.shape[0] > 20:
            ref_t, ref_i = official_recursive(ref_t, ref_i, 20, 6, policy.select)
        torch.testing.assert_close(state.tokens, ref_t)
        assert torch.equal(state.ids, ref_i)


def test_bank_reports_bytes():
    state = TokenBank(4, NextSimilarityDiscard()).append(None, torch.randn(10, 8), torch.arange(10))
    assert state.nbytes == 4 * 8 * 4 + 4 * 8


class TestBadInput:
    bank = TokenBank(4, NextSimilarityDiscard())

    def test_construction(self):
        for cap in (0, -1, 2.5, True):
            with pytest.raises(ValueError, match="capacity"):
                TokenBank(cap, NextSimilarityDiscard())
        with pytest.raises(ValueError, match="step"):
            TokenBank(4, NextSimilarityDiscard(), step=0)
        with pytest.raises(ValueError, match="policy"):
            TokenBank(4, "discard")

    def test_append(self):
        with pytest.raises(ValueError, match="floating tensor"):
            self.bank.append(None, torch.arange(4), torch.arange(4))
        with pytest.raises(ValueError, match="no tokens"):
            self.bank.append(None, torch.randn(0, 3), torch.arange(0))
        with pytest.raises(ValueError, match="3 tokens but 2 ids"):
            self.bank.append(None, torch.randn(3, 3), torch.arange(2))
        with pytest.raises(ValueError, match="LongTensor"):
            self.bank.append(None, torch.randn(3, 3), torch.arange(3).int())
        with pytest.raises(ValueError, match="NaN"):
            self.bank.append(None, torch.tensor([[0.0, float("nan")]]), torch.arange(1))
        with pytest.raises(ValueError, match="strictly increasing"):
            self.bank.append(None, torch.randn(3, 3), torch.tensor([0, 2, 1]))
        state = self.bank.append(None, torch.randn(3, 3), torch.arange(3))
        with pytest.raises(ValueError, match="continue the stream"):
            self.bank.append(state, torch.randn(2, 3), torch.tensor([2, 3]))
        with pytest.raises(ValueError, match="do not match"):
            self.bank.append(state, torch.randn(2, 4), torch.tensor([5, 6]))
        assert isinstance(state, BankState)


@pytest.mark.parametrize("n,block", [(1, 4), (2, 4), (9, 4), (17, 8), (33, 512)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_blockwise_neighbour_similarity_equals_the_whole_bank_form(n, block, dtype):
    from avmem.memory.bank import neighbour_similarity, neighbour_similarity_reference

    tokens = torch.randn(n, 3, 16).to(dtype)
    tokens[n // 2] = tokens[max(n // 2 - 1, 0)]  # an exact duplicate: cosine 1
    got = neighbour_similarity(tokens, block=block)
    want = neighbour_similarity_reference(tokens)
    assert got.shape == (n - 1,) and got.dtype == want.dtype
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
