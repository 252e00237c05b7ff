"""Layer-level memory benchmark: what each memory layer keeps, on its own, far beyond any token window.

The memory layers of the study (seed 001 Tables 2-3) are compared in isolation, at the same state bytes per
stream, on synthetic token streams whose answers lie far outside any token window:

=================  ===============================================================================================
ttt-hf / -sgd /    the library's :class:`~avmem.memory.ttt.TTTMemory` (fast-weight MLP per head) with the
ttt-muon           Hessian-free (3 CG steps), gradient or Muon update rule; its fast weights are the state
mamba2             :class:`~avmem.memory.ssm.Mamba2Memory` (pure-PyTorch SSD); SSM state + conv tail as the state,
                   ``d_state`` chosen so the state fits the same bytes
bank-discard /     :class:`~avmem.memory.bank.TokenBank` with next-similarity discard / segment merge, holding as
bank-merge         many tokens (features + ids) as fit the same bytes; read by one attention of the query over it
none               no memory (the query token alone): the floor each task's chance level shows
=================  ===============================================================================================

Tasks (each stream ends with its queries; answers are classes):

* ``recall``: ``pairs`` key -> value pairs, each seen once, at random places in the first eighth of the stream;
  the rest is random filler; every key is asked at the end (value classes, chance 1/values).
* ``interfere``: ``recall`` plus ``distractors`` more key -> value pairs (keys from the same pool, never the asked
  ones, values random) spread over the rest of the stream: as salient as the asked pairs and twice as many as the
  token bank holds, so no memory can tell at writing time what will be asked (capacity at equal bytes).
* ``count``: ``events`` event types occur 0..7 times each at random places; each type is asked how many times it
  occurred (8 classes, chance 1/8).
* ``order``: ``events`` distinct events at random places in the first quarter; the end asks, for random pairs
  (A, B), whether A came before B (2 classes, chance 1/2).

The outer parameters (token embeddings, the layer's own weights, a small read-out) are trained with AdamW on
streams of ``--train-length`` tokens and tested on streams of ``--lengths`` tokens (4-16x longer). Every
(task, memory, seed) cell is trained once; each tested length appends one JSON line to ``OUT/results.jsonl``
as soon as it is measured (accuracy, distance of the evidence, time and state bytes per 1k tokens), and a rerun
skips what is there (trained parameters are kept in ``OUT/models/`` so an interrupted cell is only re-tested).

    python benchmarks/memory_recall.py --out recall_out                 # the full run (CPU: about 45 minutes)
    python benchmarks/memory_recall.py --quick --out /tmp/recall_quick   # tiny sizes: the pipeline only
    python benchmarks/memory_recall.py --report --out recall_out         # table + plot from results.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avmem.memory.bank import BankState, NextSimilarityDiscard, SegmentMerge, TokenBank
from avmem.memory.ssm.mamba2 import Mamba2Config, Mamba2Memory, Mamba2State
from avmem.memory.ttt import TTTConfig, TTTMemory, TTTState

VARIANTS = ("ttt-hf", "ttt-sgd", "ttt-muon", "mamba2", "bank-discard", "bank-merge", "none")
TASKS = ("recall", "count", "order", "interfere")

FILLER = 64          # filler symbols (slot a ids 0..63)
SYMBOLS = 64         # keys / events (slot a ids FILLER..FILLER+63)
VALUES = 16          # recall values (slot b ids 1..16)
B_QUERY = VALUES + 1
B_COUNT = VALUES + 2
B_ORDER = VALUES + 3  # order queries: slot b = B_ORDER + index of the second event
VOCAB_A = FILLER + SYMBOLS
VOCAB_B = B_ORDER + SYMBOLS
MAX_COUNT = 8
T_975 = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571, 7: 2.447, 8: 2.365, 9: 2.306, 10: 2.262}


@dataclass
class Bench:
    """Sizes of the benchmark (the defaults are the full CPU run; :meth:`quick` the test sizes)."""

    dim: int = 32
    heads: int = 2
    mini_batch: int = 128
    base_lr: float = 30.0
    pairs: int = 4
    keys: int = 32
    distractors: int = 64
    events: int = 4
    count_types: int = 4
    train_length: int = 512
    lengths: tuple[int, ...] = (2048, 8192, 32768)
    steps: int = 200
    batch: int = 8
    lr: float = 1e-2
    eval_streams: int = 16
    piece: int = 2048
    bank_step: int = 128
    seeds: tuple[int, ...] = (0, 1, 2)

    @classmethod
    def quick(cls) -> Bench:
        return cls(mini_batch=64, keys=8, train_length=256, lengths=(1024,), steps=3, batch=4, eval_streams=4,
                   piece=256, bank_step=64, seeds=(0,))


# ---------------------------------------------------------------------------------------------------------------
# tasks

@dataclass
class Streams:
    """A batch of streams: slot ids a, b [n, T] (token = emb_a[a] + emb_b[b]); the last ``queries`` tokens are
    the questions, ``answers`` [n, queries] their classes, ``distance`` [n, queries] how many tokens before its
    question the oldest evidence of each answer lies."""

    a: np.ndarray
    b: np.ndarray
    answers: np.ndarray
    distance: np.ndarray
    classes: int

    @property
    def queries(self) -> int:
        return self.answers.shape[1]


def make_streams(task: str, n: int, length: int, rng: np.random.Generator, bench: Bench) -> Streams:
    """``n`` streams of ``length`` tokens of ``task`` (see the module docstring)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r} (choose from {', '.join(TASKS)})")
    a = rng.integers(0, FILLER, size=(n, length))
    b = np.zeros((n, length), dtype=np.int64)
    rows = np.arange(n)[:, None]
    if task in ("recall", "interfere"):
        q = bench.pairs
        body = length - q
        keys = np.stack([rng.choice(bench.keys, q, replace=False) for _ in range(n)])
        values = rng.integers(0, VALUES, size=(n, q))
        where = np.stack([np.sort(rng.choice(max(q, body // 8), q, replace=False)) for _ in range(n)])
        a[rows, where] = FILLER + keys
        b[rows, where] = 1 + values
        if task == "interfere":
            m = bench.distractors
            for i in range(n):
                others = np.setdiff1d(np.arange(bench.keys), keys[i])
                spots = body // 8 + rng.choice(body - body // 8, m, replace=False)
                a[i, spots] = FILLER + rng.choice(others, m)
                b[i, spots] = 1 + rng.integers(0, VALUES, m)
        order = np.stack([rng.permutation(q) for _ in range(n)])
        a[:, body:] = FILLER + np.take_along_axis(keys, order, 1)
        b[:, body:] = B_QUERY
        answers = np.take_along_axis(values, order, 1)
        asked_at = body + np.arange(q)[None]
        distance = asked_at - np.take_along_axis(where, order, 1)
        return Streams(a, b, answers, distance, VALUES)
    if task == "count":
        q = bench.count_types
        body = length - q
        counts = rng.integers(0, MAX_COUNT, size=(n, q))
        distance = np.zeros((n, q), dtype=np.int64)
        for i in range(n):
            total = int(counts[i].sum())
            where = rng.choice(body, total, replace=False)
            kinds = np.repeat(np.arange(q), counts[i])
            a[i, where] = FILLER + kinds
            for k in range(q):
                hit = where[kinds == k]
                distance[i, k] = body + k - hit.min() if hit.size else 0
        a[:, body:] = FILLER + np.arange(q)[None]
        b[:, body:] = B_COUNT
        return Streams(a, b, counts, distance, MAX_COUNT)
    q = bench.events
    body = length - q
    events = np.stack([rng.choice(bench.keys, q, replace=False) for _ in range(n)])
    where = np.stack([rng.choice(max(q, body // 4), q, replace=False) for _ in range(n)])
    a[rows, where] = FILLER + events
    first = np.stack([rng.permutation(q) for _ in range(n)])
    second = (first + rng.integers(1, q, size=(n, q))) % q
    a[:, body:] = FILLER + np.take_along_axis(events, first, 1)
    b[:, body:] = B_ORDER + np.take_along_axis(events, second, 1)
    wf, ws = np.take_along_axis(where, first, 1), np.take_along_axis(where, second, 1)
    answers = (wf < ws).astype(np.int64)
    distance = body + np.arange(q)[None] - np.minimum(wf, ws)
    return Streams(a, b, answers, distance, 2)


# ---------------------------------------------------------------------------------------------------------------
# memories at equal state bytes

def ttt_config(bench: Bench, update: str) -> TTTConfig:
    """The TTT layer of the benchmark: no lag objective (its tail would be extra state), eager path."""
    return TTTConfig(dim=bench.dim, num_heads=bench.heads, mini_batch=bench.mini_batch, base_lr=bench.base_lr,
                     update=update, cg_iters=3, lag_distance=0, fast="off")


def state_budget(bench: Bench) -> int:
    """Bytes per stream of the TTT fast weights (W1, b1, W2, b2 in float32): the budget every memory gets."""
    cfg = ttt_config(bench, "sgd")
    d, h = cfg.head_dim, cfg.hidden_dim
    return 4 * cfg.num_heads * (d * h + h + h * d + d)


def mamba_config(bench: Bench) -> Mamba2Config:
    """The largest ``d_state`` whose SSM state + conv tail (float32) fit the budget (headdim 16, expand 2)."""
    budget = state_budget(bench)
    best = None
    for n in range(1, 257):
        cfg = Mamba2Config(dim=bench.dim, d_state=n, expand=2, headdim=16, chunk=64)
        if mamba_state_bytes(cfg) > budget:
            break
        best = cfg
    if best is None:
        raise ValueError(f"no Mamba-2 state fits {budget} bytes")
    return best


def mamba_state_bytes(cfg: Mamba2Config) -> int:
    """Bytes per stream of a float32 :class:`Mamba2State`: ssm [H, P, N] + conv [d_inner + 2N, d_conv - 1]."""
    return 4 * (cfg.heads * cfg.headdim * cfg.d_state + (cfg.d_inner + 2 * cfg.d_state) * (cfg.d_conv - 1))


def bank_capacity(bench: Bench) -> int:
    """Tokens (float32 features + an int64 id each) that fit the budget."""
    return state_budget(bench) // (4 * bench.dim + 8)


class TTTWrap(nn.Module):
    """TTTMemory with all RoPE positions 0 (a set memory: no position code that 16x longer streams would break)."""

    def __init__(self, bench: Bench, update: str) -> None:
        super().__init__()
        self.layer = TTTMemory(ttt_config(bench, update))

    def step(self, x: Tensor, state: TTTState | None) -> tuple[Tensor, TTTState]:
        pos = torch.zeros(x.shape[1], 3, dtype=torch.long, device=x.device)
        return self.layer(x, pos, state)

    @staticmethod
    def state_bytes(state: TTTState) -> int:
        return sum(t[0].numel() * t.element_size() for t in state.fast.tensors())


class MambaWrap(nn.Module):
    def __init__(self, bench: Bench) -> None:
        super().__init__()
        self.layer = Mamba2Memory(mamba_config(bench))

    def step(self, x: Tensor, state: Mamba2State | None) -> tuple[Tensor, Mamba2State]:
        return self.layer(x, None, state)

    @staticmethod
    def state_bytes(state: Mamba2State) -> int:
        return sum(t[0].numel() * t.element_size() for t in (state.ssm, state.conv))


class BankWrap(nn.Module):
    """A token bank per stream of projected tokens; the query reads it by one attention (content + the kept
    tokens' rank in the bank, which survives any stream length), added to the query token."""

    def __init__(self, bench: Bench, policy: str) -> None:
        super().__init__()
        dim = bench.dim
        self.capacity = bank_capacity(bench)
        self.bank = TokenBank(self.capacity, NextSimilarityDiscard() if policy == "discard" else SegmentMerge(),
                              step=bench.bank_step)
        self.write = nn.Linear(dim, dim)
        self.rank = nn.Embedding(self.capacity, dim)
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.null_k = nn.Parameter(torch.zeros(dim))

    def step(self, x: Tensor, state: tuple[list[BankState], int] | None) -> tuple[Tensor, tuple[list[BankState], int]]:
        """Append x [B, T, dim] to each stream's bank; the state is (the banks, tokens seen); returns x unchanged
        (the bank is read by :meth:`read`)."""
        h = self.write(x)
        banks, start = state if state is not None else (None, 0)
        ids = torch.arange(start, start + x.shape[1], device=x.device)
        new = [self.bank.append(None if banks is None else banks[i], h[i], ids) for i in range(x.shape[0])]
        return x, (new, start + x.shape[1])

    def read(self, state: tuple[list[BankState], int] | None, xq: Tensor) -> Tensor:
        """Queries xq [B, Q, dim] attend over the bank (and a null slot): [B, Q, dim]."""
        if state is None:
            return xq
        mem = torch.stack([s.tokens for s in state[0]])  # [B, n, dim]
        mem = mem + self.rank.weight[: mem.shape[1]]
        keys = torch.cat([self.k(mem), self.null_k.expand(mem.shape[0], 1, -1)], dim=1)
        vals = torch.cat([self.v(mem), torch.zeros_like(mem[:, :1])], dim=1)
        att = torch.softmax(self.q(xq) @ keys.transpose(1, 2) / math.sqrt(xq.shape[-1]), dim=-1)
        return xq + self.o(att @ vals)

    @staticmethod
    def state_bytes(state: tuple[list[BankState], int]) -> int:
        return state[0][0].nbytes


class Model(nn.Module):
    """Embeddings -> memory -> LayerNorm + linear read-out at the query tokens."""

    def __init__(self, variant: str, classes: int, bench: Bench) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown memory {variant!r} (choose from {', '.join(VARIANTS)})")
        self.variant, self.bench = variant, bench
        self.emb_a = nn.Embedding(VOCAB_A, bench.dim)
        self.emb_b = nn.Embedding(VOCAB_B, bench.dim)
        if variant.startswith("ttt-"):
            self.memory: nn.Module | None = TTTWrap(bench, variant.removeprefix("ttt-"))
        elif variant == "mamba2":
            self.memory = MambaWrap(bench)
        elif variant.startswith("bank-"):
            self.memory = BankWrap(bench, variant.removeprefix("bank-"))
        else:
            self.memory = None
        self.norm = nn.LayerNorm(bench.dim)
        self.head = nn.Linear(bench.dim, classes)

    def forward(self, a: Tensor, b: Tensor, queries: int) -> tuple[Tensor, object]:
        """a, b [B, T] -> logits [B, queries, classes] for the last ``queries`` tokens, and the final state."""
        length = a.shape[1]
        state = None
        bank = isinstance(self.memory, BankWrap)
        for start in range(0, length, self.bench.piece):
            stop = min(start + self.bench.piece, length)
            x = self.emb_a(a[:, start:stop]) + self.emb_b(b[:, start:stop])
            if self.memory is None:
                y = x
            elif bank:
                body = x[:, : max(0, length - queries - start)]
                if body.shape[1]:
                    _, state = self.memory.step(body, state)
                y = self.memory.read(state, x[:, -queries:]) if stop == length else x
            else:
                y, state = self.memory.step(x, state)
        return self.head(self.norm(y[:, -queries:])), state

    def state_bytes(self, state: object) -> int:
        return 0 if self.memory is None or state is None else self.memory.state_bytes(state)


# ---------------------------------------------------------------------------------------------------------------
# one cell: train, then test at every length

def to_tensors(s: Streams, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    return (torch.from_numpy(s.a).to(device), torch.from_numpy(s.b).to(device),
            torch.from_numpy(s.answers).to(device))


def train_cell(task: str, variant: str, seed: int, bench: Bench, log=None) -> tuple[Model, dict]:
    """Train the outer parameters of ``variant`` on ``task`` (streams of ``bench.train_length``)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(10_000 * seed + TASKS.index(task))
    probe = make_streams(task, 1, bench.train_length, rng, bench)
    model = Model(variant, probe.classes, bench)
    opt = torch.optim.AdamW(model.parameters(), lr=bench.lr, weight_decay=0.0)
    warm = max(1, bench.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: min(1.0, (k + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, k / bench.steps))))
    losses, accs = [], []
    t0 = time.perf_counter()
    for k in range(bench.steps):
        s = make_streams(task, bench.batch, bench.train_length, rng, bench)
        a, b, y = to_tensors(s, torch.device("cpu"))
        logits, _ = model(a, b, s.queries)
        loss = F.cross_entropy(logits.reshape(-1, s.classes), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        accs.append(float((logits.argmax(-1) == y).float().mean()))
        if log is not None and (k + 1) % max(1, bench.steps // 5) == 0:
            log(f"   step {k + 1}/{bench.steps} loss {np.mean(losses[-10:]):.3f} acc {np.mean(accs[-10:]):.3f}")
    tail = max(1, len(losses) // 10)
    info = {"train_s": time.perf_counter() - t0, "first_loss": float(np.mean(losses[:tail])),
            "last_loss": float(np.mean(losses[-tail:])), "last_train_acc": float(np.mean(accs[-tail:]))}
    return model, info


@torch.no_grad()
def test_cell(model: Model, task: str, seed: int, length: int, bench: Bench) -> dict:
    """Accuracy on ``bench.eval_streams`` fresh streams of ``length`` tokens; time and state per 1k tokens."""
    rng = np.random.default_rng(10_000 * seed + 1_000 + TASKS.index(task) * 100 + length % 97)
    s = make_streams(task, bench.eval_streams, length, rng, bench)
    a, b, y = to_tensors(s, torch.device("cpu"))
    model.eval()
    t0 = time.perf_counter()
    logits, state = model(a, b, s.queries)
    seconds = time.perf_counter() - t0
    model.train()
    hit = (logits.argmax(-1) == y).float()
    return {"accuracy": float(hit.mean()), "n": int(hit.numel()), "chance": 1.0 / s.classes,
            "distance_mean": float(s.distance.mean()), "distance_min": int(s.distance.min()),
            "ms_per_1k_tokens": 1000 * seconds / (bench.eval_streams * length / 1000),
            "state_bytes": model.state_bytes(state)}


@torch.no_grad()
def measure_cost(variants: list[str], bench: Bench, length: int, repeats: int = 3) -> str:
    """Inference time of each memory alone (untrained weights: the cost does not depend on them): the median of
    ``repeats`` timed passes over ``bench.eval_streams`` recall streams of ``length`` tokens, after one warm-up
    pass. A table in markdown."""
    rng = np.random.default_rng(0)
    s = make_streams("recall", bench.eval_streams, length, rng, bench)
    a, b, _ = to_tensors(s, torch.device("cpu"))
    lines = [f"Inference cost ({bench.eval_streams} streams of {length:,} tokens at once, "
             f"{torch.get_num_threads()} thread(s), median of {repeats} passes):", "",
             "| memory | state bytes / stream | ms per 1k tokens per stream | vs ttt-sgd |", "|---|---|---|---|"]
    times: dict[str, float] = {}
    state_bytes: dict[str, int] = {}
    for variant in variants:
        torch.manual_seed(0)
        model = Model(variant, s.classes, bench).eval()
        model(a[:, :bench.mini_batch * 2], b[:, :bench.mini_batch * 2], s.queries)  # warm-up
        runs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            _, state = model(a, b, s.queries)
            runs.append(time.perf_counter() - t0)
        times[variant] = 1000 * float(np.median(runs)) / (bench.eval_streams * length / 1000)
        state_bytes[variant] = model.state_bytes(state)
    for variant in variants:
        ratio = f"{times[variant] / times['ttt-sgd']:.2f}x" if "ttt-sgd" in times else "-"
        lines.append(f"| {variant} | {state_bytes[variant]:,} | {times[variant]:.2f} | {ratio} |")
    return "\n".join(lines)


def load_results(path: Path) -> list[dict]:
    """The JSON lines of ``path`` (a torn last line from an interrupted run is ignored)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def run(bench: Bench, tasks: list[str], variants: list[str], out: Path) -> None:
    """Every (task, variant, seed) cell not yet in ``OUT/results.jsonl``: train (or load), test, append."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "models").mkdir(exist_ok=True)
    path = out / "results.jsonl"
    (out / "bench.json").write_text(json.dumps(asdict(bench), indent=1))

    def log(msg: str) -> None:
        print(msg, flush=True)

    for task in tasks:
        for seed in bench.seeds:
            for variant in variants:
                # read again before every cell: another process may be filling the same file with other tasks
                done = {(r["task"], r["variant"], r["seed"], r["length"]) for r in load_results(path)}
                todo = [n for n in bench.lengths if (task, variant, seed, n) not in done]
                if not todo:
                    continue
                ckpt = out / "models" / f"{task}-{variant}-seed{seed}.pt"
                log(f"== {task} {variant} seed {seed}")
                if ckpt.is_file():
                    saved = torch.load(ckpt, weights_only=True)
                    model = Model(variant, saved["classes"], bench)
                    model.load_state_dict(saved["state"])
                    info = saved["info"]
                else:
                    model, info = train_cell(task, variant, seed, bench, log)
                    torch.save({"state": model.state_dict(), "info": info, "classes": model.head.out_features},
                               ckpt)
                for length in todo:
                    res = test_cell(model, task, seed, length, bench)
                    row = {"task": task, "variant": variant, "seed": seed, "length": length,
                           "train_length": bench.train_length, "steps": bench.steps, **info, **res}
                    with path.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    log(f"   length {length}: accuracy {res['accuracy']:.3f} (chance {res['chance']:.3f}), "
                        f"{res['ms_per_1k_tokens']:.1f} ms / 1k tokens, state {res['state_bytes']} B")


# ---------------------------------------------------------------------------------------------------------------
# report

def summarise(rows: list[dict]) -> dict[tuple[str, str, int], dict]:
    """(task, variant, length) -> mean accuracy over seeds with a 95 % t-interval over seeds and the costs."""
    latest = {(r["task"], r["variant"], r["seed"], r["length"]): r for r in rows}  # a repeated cell counts once
    groups: dict[tuple[str, str, int], list[dict]] = {}
    for r in latest.values():
        groups.setdefault((r["task"], r["variant"], r["length"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        acc = np.array([r["accuracy"] for r in rs])
        half = T_975.get(len(acc), 1.96) * acc.std(ddof=1) / math.sqrt(len(acc)) if len(acc) > 1 else float("nan")
        out[key] = {"mean": float(acc.mean()), "half": float(half), "seeds": len(acc), "per_seed": acc.tolist(),
                    "chance": rs[0]["chance"], "distance_mean": float(np.mean([r["distance_mean"] for r in rs])),
                    "ms": float(np.median([r["ms_per_1k_tokens"] for r in rs])), "state_bytes": rs[0]["state_bytes"],
                    "train_acc": float(np.mean([r["last_train_acc"] for r in rs])), "train_length": rs[0]["train_length"],
                    "train_s": float(np.mean([r["train_s"] for r in rs]))}
    return out


def report(rows: list[dict], out: Path) -> str:
    """Markdown tables (accuracy per task and length; cost) and the plot ``OUT/memory_recall.png``."""
    summ = summarise(rows)
    tasks = [t for t in TASKS if any(k[0] == t for k in summ)]
    variants = [v for v in VARIANTS if any(k[1] == v for k in summ)]
    lines = []
    for task in tasks:
        lengths = sorted({k[2] for k in summ if k[0] == task})
        chance = next(v["chance"] for k, v in summ.items() if k[0] == task)
        train_len = next(r["train_length"] for r in rows if r["task"] == task)
        lines += [(f"**{task}** (chance {chance:.3f}; trained on {train_len}-token streams; mean accuracy over seeds "
                   "± 95 % t-interval over seeds (each seed's accuracy); last column: training accuracy at the end)"),
                  "",
                  "| memory | " + " | ".join(f"{n:,} tokens" for n in lengths) + " | train |",
                  "|---|" + "---|" * (len(lengths) + 1)]
        for v in variants:
            cells, train_acc = [], None
            for n in lengths:
                s = summ.get((task, v, n))
                if s is None:
                    cells.append("-")
                    continue
                train_acc = s["train_acc"]
                pm = "" if math.isnan(s["half"]) else f" ± {s['half']:.2f}"
                cells.append(f"{s['mean']:.2f}{pm} ("
                             + " / ".join(f"{a:.2f}" for a in s["per_seed"]) + ")")
            if train_acc is not None:
                lines.append(f"| {v} | " + " | ".join(cells) + f" | {train_acc:.3f} |")
        dist = [summ[k]["distance_mean"] for k in sorted(summ) if k[0] == task and k[1] == variants[0]]
        lines += ["", "mean distance of the evidence (tokens): " + ", ".join(f"{d:,.0f}" for d in dist), ""]
    longest = max(k[2] for k in summ)
    lines += [f"Cost on this CPU (median over cells, streams of {longest:,} tokens, batch of streams, no gradients):",
              "", "| memory | state bytes / stream | ms per 1k tokens per stream | training s per cell |",
              "|---|---|---|---|"]
    for v in variants:
        cells = [s for k, s in summ.items() if k[1] == v and k[2] == longest]
        if cells:
            lines.append(f"| {v} | {cells[0]['state_bytes']:,} | {np.median([c['ms'] for c in cells]):.2f} | "
                         f"{np.median([c['train_s'] for c in cells]):.0f} |")
    plot(summ, tasks, variants, out / "memory_recall.png")
    return "\n".join(lines)


def plot(summ: dict, tasks: list[str], variants: list[str], path: Path) -> None:
    """Accuracy vs stream length (log axis), one panel per task, 95 % intervals over seeds, chance dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for i, v in enumerate(variants):
            pts = sorted((k[2], s) for k, s in summ.items() if k[0] == task and k[1] == v)
            if not pts:
                continue
            xs = [p[0] for p in pts]
            ys = [p[1]["mean"] for p in pts]
            err = [0 if math.isnan(p[1]["half"]) else p[1]["half"] for p in pts]
            ax.errorbar(xs, ys, yerr=err, marker="o", ms=3, capsize=2, label=v, color=f"C{i}",
                        ls="--" if v.startswith("bank") or v == "none" else "-")
        chance = next(s["chance"] for k, s in summ.items() if k[0] == task)
        ax.axhline(chance, color="0.5", lw=1, ls=":")
        ax.set_xscale("log")
        ticks = sorted({k[2] for k in summ if k[0] == task})
        ax.set_xticks(ticks, [f"{n / 1024:g}k" for n in ticks])
        ax.minorticks_off()
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{task} (chance {chance:.2f})", fontsize=9)
        trained = next(s["train_length"] for k, s in summ.items() if k[0] == task)
        ax.set_xlabel(f"stream length (tokens; trained on {trained})")
        ax.set_ylabel("accuracy")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("memory_recall_out"))
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--seeds", default=None, help="Comma-separated seeds (default 0,1,2; --quick: 0).")
    p.add_argument("--steps", type=int, default=None, help="Training steps per cell.")
    p.add_argument("--train-length", type=int, default=None)
    p.add_argument("--lengths", default=None, help="Comma-separated test stream lengths.")
    p.add_argument("--quick", action="store_true", help="Tiny sizes (a test of the pipeline, not a result).")
    p.add_argument("--report", action="store_true", help="Only the table and plot from OUT/results.jsonl.")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cost", type=int, default=None, metavar="LENGTH",
                   help="Only time each memory's inference on streams of LENGTH tokens (OUT/cost.md).")
    args = p.parse_args(argv)
    if args.threads < 1:
        print(f"memory_recall: --threads must be >= 1, got {args.threads}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    bench = Bench.quick() if args.quick else Bench()
    try:
        if args.seeds:
            bench.seeds = tuple(int(s) for s in args.seeds.split(","))
        if args.lengths:
            bench.lengths = tuple(int(s) for s in args.lengths.split(","))
    except ValueError:
        print("memory_recall: --seeds and --lengths take comma-separated integers", file=sys.stderr)
        return 2
    if args.steps is not None:
        bench.steps = args.steps
    if args.train_length is not None:
        bench.train_length = args.train_length
    tasks = [t for t in args.tasks.split(",") if t]
    variants = [v for v in args.variants.split(",") if v]
    bad = [t for t in tasks if t not in TASKS] + [v for v in variants if v not in VARIANTS]
    if bad or not tasks or not variants:
        print(f"memory_recall: unknown task/memory {bad} (tasks {', '.join(TASKS)}; memories {', '.join(VARIANTS)})",
              file=sys.stderr)
        return 2
    lengths = (bench.train_length, *bench.lengths)
    if any(n % bench.mini_batch or n <= 16 for n in lengths) or bench.steps <= 0:
        print(f"memory_recall: stream lengths must be multiples of the mini-batch ({bench.mini_batch}) and steps > 0",
              file=sys.stderr)
        return 2
    if args.cost is not None:
        if args.cost % bench.mini_batch or args.cost <= 2 * bench.mini_batch:
            print(f"memory_recall: --cost takes a multiple of the mini-batch ({bench.mini_batch}) above "
                  f"{2 * bench.mini_batch}, got {args.cost}", file=sys.stderr)
            return 2
        text = measure_cost(variants, bench, args.cost)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "cost.md").write_text(text + "\n")
        print(text)
        return 0
    if not args.report:
        print(f"state budget {state_budget(bench)} B per stream: TTT fast weights; Mamba-2 d_state "
              f"{mamba_config(bench).d_state} ({mamba_state_bytes(mamba_config(bench))} B); token bank "
              f"{bank_capacity(bench)} tokens", flush=True)
        run(bench, tasks, variants, args.out)
    rows = [r for r in load_results(args.out / "results.jsonl") if r["task"] in tasks and r["variant"] in variants]
    if not rows:
        print(f"memory_recall: no results in {args.out / 'results.jsonl'}", file=sys.stderr)
        return 2
    text = report(rows, args.out)
    (args.out / "table.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
