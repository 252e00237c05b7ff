"""The training loop on Hugging Face ``accelerate``: one process or many (``accelerate launch`` / ``torchrun``:
DDP, FSDP or DeepSpeed from the launcher's config; the shipped ones are in ``avmem/train/configs/``).

Output folder (loads with :func:`avmem.load_model`, like the official release)::

    OUT/base/                  release base: backbone + audio encoder (written once, before adapters)
    OUT/adapter/               final adapter: LoRA + TTT in the release key layout, avmem_ttt.json
    OUT/model/                 instead of base/ + adapter/ when no LoRA is used (whole parts trained): an avmem
                               model folder; checkpoint-N/model/ likewise
    OUT/checkpoint-N/adapter/  the adapter at step N, and base -> ../base
    OUT/checkpoint-N/          trainer_state.json, optimizer.pt, scheduler.pt, rng_state_R.pt (resume)
    OUT/logs/                  tensorboard events (loss, lr, skipped samples)
    OUT/ranks.json             per rank: digest of the trained weights, first samples trained on
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .config import TrainConfig

STATE_FILE = "trainer_state.json"


@dataclass
class TrainResult:
    """What a run did: optimiser steps, samples seen and skipped (all ranks), the logged losses, the output folder,
    each rank's weight digest, and the trained model (adapters unmerged) of this rank."""

    steps: int
    samples: int
    skipped: int
    losses: list[float]
    output_dir: Path
    seconds: float
    is_main: bool = True
    rank_digests: list[str] | None = None
    model: object | None = None


def _log(accelerator, text: str) -> None:
    if accelerator.is_main_process:
        print(f"avmem train: {text}", file=sys.stderr, flush=True)


def _lr_lambda(total: int, warmup: int, hold: int = 0):
    """Linear warm-up then cosine decay to 0; the first ``hold`` steps give 0 (two-stage schedule)."""

    def f(step: int) -> float:
        if step < hold:
            return 0.0
        s = step - hold
        span = max(1, total - hold)
        if s < warmup:
            return (s + 1) / max(1, warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (s - warmup) / max(1, span - warmup))))

    return f


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The ``checkpoint-N`` folder with the largest N that holds a trainer state, or None."""
    found = [(int(m.group(1)), p) for p in output_dir.glob("checkpoint-*")
             if (m := re.fullmatch(r"checkpoint-(\d+)", p.name)) and (p / STATE_FILE).is_file()]
    return max(found)[1] if found else None


def train(cfg: TrainConfig) -> TrainResult:
    """Run the training described by ``cfg`` (already checked) in this process (one rank of many when launched
    by ``accelerate launch`` / ``torchrun``).

    Raises:
        ValueError: bad data files or samples, an unreadable model, a resume folder that does not fit.
    """
    from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs
    from accelerate.utils import DistributedType, set_seed
    from torch.utils.data import DataLoader

    from ..memory.kv.omnimem import OmniMemPolicy
    from ..model import _with_cg_iters, load_model
    from ..session import SessionSettings
    from .data import VideoQADataset, check_media, collate_single, load_records
    from .forward import TrainableAVMem
    from .lora import add_lora

    cfg.check()
    out = Path(cfg.output_dir)
    resume_dir = None
    if cfg.resume is not None:
        resume_dir = latest_checkpoint(out) if cfg.resume == "latest" else Path(cfg.resume)
        if resume_dir is None or not (resume_dir / STATE_FILE).is_file():
            raise ValueError(f"resume: no checkpoint with {STATE_FILE} in "
                             f"{out if cfg.resume == 'latest' else cfg.resume}")
    elif latest_checkpoint(out) is not None:
        raise ValueError(f"{out} already holds a training run: resume it (--resume latest) or choose another "
                         "output_dir")
    records = load_records(cfg.data)
    check_media(records, cfg.validate_samples)

    cuda = torch.cuda.is_available()
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if cuda else "fp32")
    if precision == "bf16" and not cuda:
        raise ValueError("precision bf16 needs a CUDA device; use fp32 on CPU")
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    accelerator = Accelerator(gradient_accumulation_steps=cfg.grad_accum, cpu=not cuda,
                              log_with=None if cfg.report_to == "none" else cfg.report_to,
                              project_dir=str(out), kwargs_handlers=[ddp],
                              dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True,
                                                                        data_seed=cfg.seed))
    set_seed(cfg.seed)  # every rank builds the same initial adapters and TTT block
    start_time = time.perf_counter()

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    model = load_model(cfg.model, device=accelerator.device, dtype=dtype)
    if cfg.new_ttt:
        model = _new_ttt(model, cfg, accelerator.device)
    if model.ttt is None and cfg.use_ttt:
        raise ValueError(f"{cfg.model}: the model has no TTT memory to train (add one with new_ttt: true, or set "
                         "use_ttt: false)")
    if model.audio is None and cfg.use_audio:
        raise ValueError(f"{cfg.model}: the model has no audio encoder (set use_audio: false)")
    if not cfg.use_ttt:
        model.ttt = None
        model.spec.ttt = None
    if model.ttt is not None and model.spec.memory_layer == "ttt":
        model = retarget_ttt(model, cfg.ttt_update, cfg.ttt_checkpoint_group, accelerator.device)
        model = _with_cg_iters(model, cfg.cg_iters)
    settings = SessionSettings(fps=cfg.fps, max_pixels=cfg.max_pixels, min_pixels=cfg.min_pixels,
                               video_tokens=cfg.video_tokens, audio_tokens=cfg.audio_tokens,
                               use_audio=cfg.use_audio, use_ttt=cfg.use_ttt, video_policy=cfg.video_policy,
                               bank_step=cfg.bank_step)
    settings.check(model)
    whole = not cfg.use_lora  # whole parts trained: saved as avmem model folders, not release adapters
    if whole and accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP):
        raise ValueError("runs without LoRA save whole models, which is not supported under FSDP / DeepSpeed here")
    if not whole:
        _prepare_base(accelerator, model, cfg, out)
        adapter_config = add_lora(model, cfg.lora)
    else:
        adapter_config = None
        model.backbone.model.requires_grad_(False)
    llm = model.backbone.model
    if cfg.train_llm:
        llm.model.language_model.requires_grad_(True)
        llm.lm_head.requires_grad_(True)
    llm.model.visual.requires_grad_(cfg.train_vision)
    if model.ttt is not None:
        model.ttt.float().requires_grad_(True)
    if model.audio is not None:
        model.audio.requires_grad_(cfg.train_audio)
        if cfg.train_audio:
            model.audio.float()
    for p in llm.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    if cfg.gradient_checkpointing:
        model.backbone.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.backbone.model.train()
    model.backbone.model.model.visual.eval()

    policy = None
    if cfg.reader == "omnimem":
        budgets = replace(settings, reader="omnimem", budget_file=cfg.budget_file,
                          read_tokens=cfg.read_tokens).budgets(model)
        policy = OmniMemPolicy(budgets, cfg.read_chunk, cfg.omni_lambda)
    module = TrainableAVMem(model, settings, policy, train_vision=cfg.train_vision, train_audio=cfg.train_audio)
    groups = module.trainable_parameters()
    rest = [p for name in ("lora", "llm", "vision", "audio") for p in groups[name]]
    optimizer = torch.optim.AdamW(
        [{"params": groups["ttt"], "lr": cfg.ttt_lr if cfg.ttt_lr is not None else cfg.lr},
         {"params": rest, "lr": cfg.lr}], weight_decay=cfg.weight_decay)

    dataset = VideoQADataset(records, fps=cfg.fps, max_frames=cfg.max_frames, max_pixels=cfg.max_pixels,
                             min_pixels=cfg.min_pixels, factor=model.backbone.vision.factor)
    loader = DataLoader(dataset, batch_size=1, shuffle=True, num_workers=cfg.num_workers,
                        collate_fn=collate_single)
    module, optimizer, loader = accelerator.prepare(module, optimizer, loader)
    per_epoch = math.ceil(len(loader) / cfg.grad_accum)
    total = cfg.max_steps or per_epoch * cfg.epochs
    if cfg.ttt_only_steps >= total and rest:
        raise ValueError(f"ttt_only_steps ({cfg.ttt_only_steps}) >= the run's {total} steps: LoRA would never train")
    warmup = int(cfg.warmup_ratio * max(1, total - cfg.ttt_only_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer,
        [_lr_lambda(total, warmup), _lr_lambda(total, warmup, hold=cfg.ttt_only_steps)])
    fingerprint = _fingerprint(cfg, model)

    step, skipped, seen, epoch, done_in_epoch = 0, 0, 0, 0, 0
    sharded = accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP)
    if resume_dir is not None:
        state = _read_state(resume_dir, accelerator.num_processes)
        if state.get("fingerprint") != fingerprint:
            raise ValueError(f"resume: {resume_dir} was trained with {state.get('fingerprint')}, this run is "
                             f"{fingerprint}")
        if sharded:
            try:
                accelerator.load_state(str(resume_dir / "engine"))
            except (OSError, RuntimeError, KeyError, pickle.UnpicklingError) as exc:
                raise ValueError(f"resume: {resume_dir / 'engine'} cannot be restored ({_first_line(exc)})") from None
        else:
            if whole:
                _load_whole(accelerator.unwrap_model(module), resume_dir / "model")
            else:
                _load_trainables(accelerator.unwrap_model(module), resume_dir / "adapter")
            _restore(optimizer, _load_tensors(resume_dir / "optimizer.pt"), resume_dir / "optimizer.pt")
        _restore(scheduler, _load_tensors(resume_dir / "scheduler.pt"), resume_dir / "scheduler.pt")
        rng = resume_dir / f"rng_state_{accelerator.process_index}.pt"
        if rng.is_file():
            states = _load_tensors(rng)
            try:
                torch.set_rng_state(states["cpu"])
                if cuda and "cuda" in states:
                    torch.cuda.set_rng_state(states["cuda"])
            except (KeyError, TypeError, RuntimeError) as exc:
                raise ValueError(f"resume: {rng} is not a saved RNG state ({_first_line(exc)})") from None
        step = state["step"]
        seen, skipped = state["samples"][accelerator.process_index], state["skipped"][accelerator.process_index]
        epoch, k = divmod(step, per_epoch)
        done_in_epoch = min(k * cfg.grad_accum, len(loader))
        _log(accelerator, f"resumed from {resume_dir} at step {step}")
    if resume_dir is None:
        set_seed(cfg.seed + accelerator.process_index)  # per-rank dropout; a resumed run restored its RNG above

    if accelerator.is_main_process and cfg.report_to != "none":
        accelerator.init_trackers("logs", config={k: v for k, v in vars(cfg).items()
                                                  if isinstance(v, (int, float, str, bool))})
    _log(accelerator, f"{len(records)} samples, {accelerator.num_processes} process(es) on {accelerator.device}, "
                      f"{sum(p.numel() for g in groups.values() for p in g):,} trainable parameters, {total} steps")

    def save(folder: Path) -> dict:
        """Checkpoint (collective: every rank calls it); returns the full state dict on the main rank."""
        _mkdir(folder)
        state_dict = accelerator.get_state_dict(module)
        if sharded:
            accelerator.save_state(str(folder / "engine"))
        counts = accelerator.gather(torch.tensor([[seen, skipped]], dtype=torch.long, device=accelerator.device))
        if accelerator.is_main_process:
            if whole:
                _write_model(folder / "model", model)
            else:
                _write_adapter(folder / "adapter", state_dict, model, adapter_config)
            if not whole and folder != out and not (folder / "base").exists():
                os.symlink("../base", folder / "base")
            if not sharded:
                torch.save(optimizer.state_dict(), folder / "optimizer.pt")
            torch.save(scheduler.state_dict(), folder / "scheduler.pt")
            (folder / STATE_FILE).write_text(json.dumps(
                {"step": step, "epoch": epoch, "samples": counts[:, 0].tolist(), "skipped": counts[:, 1].tolist(),
                 "fingerprint": fingerprint}, indent=2))
        rng_states = {"cpu": torch.get_rng_state()}
        if cuda:
            rng_states["cuda"] = torch.cuda.get_rng_state()
        torch.save(rng_states, folder / f"rng_state_{accelerator.process_index}.pt")
        accelerator.wait_for_everyone()
        return state_dict

    losses: list[float] = []
    window: list[float] = []
    trained_on: list[str] = []
    progress = _progress(accelerator, total, step)
    module.train()
    while step < total:
        loader.set_epoch(epoch)  # the order of epoch e depends on (seed, e) only: resuming replays it
        batches = accelerator.skip_first_batches(loader, done_in_epoch) if done_in_epoch else loader
        done_in_epoch = 0
        for sample in batches:
            with accelerator.accumulate(module):
                loss, reason = _step_loss(module, accelerator.unwrap_model(module), sample)
                if reason is not None:
                    skipped += 1
                    print(f"avmem train: rank {accelerator.process_index}: skipped {sample.source}: {reason}",
                          file=sys.stderr, flush=True)
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(module.parameters(), cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            seen += 1
            if len(trained_on) < 1000:
                trained_on.append(sample.source)
            if reason is None:
                window.append(float(loss.detach()))
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            step += 1
            progress(step)
            if step % cfg.logging_steps == 0 or step == total:
                local = torch.tensor([sum(window), len(window), skipped], dtype=torch.float64,
                                     device=accelerator.device)
                agg = accelerator.reduce(local, reduction="sum")
                mean = float(agg[0] / agg[1]) if agg[1] > 0 else float("nan")
                losses.append(mean)
                window.clear()
                lrs = scheduler.get_last_lr()
                accelerator.log({"loss": mean, "lr": lrs[1], "lr_ttt": lrs[0], "skipped": float(agg[2])}, step=step)
                _log(accelerator, f"step {step}/{total} loss {mean:.4f} lr {lrs[1]:.2e} skipped {int(agg[2])}")
            if step % cfg.save_steps == 0 and step < total:
                save(out / f"checkpoint-{step}")
            if step >= total:
                break
        epoch += 1
    final = save(out / f"checkpoint-{step}")
    if accelerator.is_main_process:
        if whole:
            _write_model(out / "model", model)
        else:
            _write_adapter(out / "adapter", final, model, adapter_config)
    ranks = _rank_report(accelerator, groups, trained_on, sharded)
    if accelerator.is_main_process:
        (out / "ranks.json").write_text(json.dumps(ranks, indent=1))
    digests = [r["digest"] for r in ranks if r["digest"] is not None]
    if len(set(digests)) > 1:
        raise RuntimeError(f"ranks ended with different weights: {digests}")
    totals = accelerator.reduce(torch.tensor([seen, skipped], dtype=torch.float64, device=accelerator.device),
                                reduction="sum")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    module.eval()
    return TrainResult(steps=step, samples=int(totals[0]), skipped=int(totals[1]), losses=losses, output_dir=out,
                       seconds=time.perf_counter() - start_time, is_main=accelerator.is_main_process,
                       rank_digests=digests, model=model)


def _step_loss(module, inner, sample) -> tuple[torch.Tensor, str | None]:
    """The sample's loss, or (a zero touching every trainable parameter, why) for a sample that cannot be used:
    undecodable, or rejected by the pipeline (e.g. no frames in its window). Every rank still joins the step."""
    from .data import Skipped

    if isinstance(sample, Skipped):
        return inner.zero_loss(), sample.reason
    try:
        return module(sample), None
    except ValueError as exc:
        return inner.zero_loss(), str(exc).splitlines()[0]


def _fingerprint(cfg: TrainConfig, model) -> dict:
    """What a checkpoint must agree on to be resumed: adapters, TTT configuration, data files."""
    return {"lora": dict(vars(cfg.lora)) if cfg.use_lora else None,
            "train": [cfg.train_llm, cfg.train_vision, cfg.train_audio],
            "ttt": model.spec.ttt, "memory_layer": model.spec.memory_layer, "data": list(cfg.data),
            "grad_accum": cfg.grad_accum, "seed": cfg.seed}


def _prepare_base(accelerator, model, cfg: TrainConfig, out: Path) -> None:
    """Write ``OUT/base`` once (main rank); an existing one must come from the same model."""
    from ..official_release import save_release_base

    marker = out / "base" / "avmem_source.json"
    if accelerator.is_main_process:
        if marker.is_file():
            source = json.loads(marker.read_text()).get("model")
            if source != cfg.model:
                raise ValueError(f"{out / 'base'} was written from {source!r}, not {cfg.model!r}: use another "
                                 "output_dir")
        else:
            save_release_base(model, out / "base")
            marker.write_text(json.dumps({"model": cfg.model}))
    accelerator.wait_for_everyone()


def _rank_report(accelerator, groups: dict, trained_on: list[str], sharded: bool) -> list[dict]:
    """Per rank: SHA-256 of its trainable weights (bitwise; replicas must agree; None when sharded, where each
    rank holds its own shard) and the first samples it trained on (the data split)."""
    import hashlib

    from accelerate.utils import gather_object

    digest = None
    if not sharded:
        h = hashlib.sha256()
        for name in sorted(groups):
            for p in groups[name]:
                h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
        digest = h.hexdigest()
    return list(gather_object([{"rank": accelerator.process_index, "digest": digest, "samples": trained_on}]))


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _progress(accelerator, total: int, start: int):
    """A progress bar on the main process (stderr); returns update(step)."""
    if not accelerator.is_main_process or not sys.stderr.isatty():
        return lambda step: None
    from tqdm import tqdm

    bar = tqdm(total=total, initial=start, desc="training", unit="step")

    def update(step: int) -> None:
        bar.update(step - bar.n)
        if step >= total:
            bar.close()

    return update


def _new_ttt(model, cfg: TrainConfig, device):
    """A freshly initialised memory layer (seeded by ``cfg.seed``) in place of the model's own, if any."""
    from ..memory.ttt import TTTConfig, TTTMemory

    if cfg.memory_layer == "mamba2":
        from ..memory.ssm import Mamba2Config, Mamba2Memory

        d_inner = 2 * model.hidden_size
        if d_inner % cfg.ttt_heads:
            raise ValueError(f"memory_layer mamba2: 2 * hidden ({d_inner}) must be divisible by ttt_heads")
        m_cfg = Mamba2Config(dim=model.hidden_size, d_state=64, expand=2, headdim=d_inner // cfg.ttt_heads)
        torch.manual_seed(cfg.seed)
        model.ttt = Mamba2Memory(m_cfg).to(device=device)
        model.spec.ttt = vars(m_cfg).copy()
        model.spec.memory_layer = "mamba2"
        return model
    ttt_cfg = TTTConfig(dim=model.hidden_size, num_heads=cfg.ttt_heads, hidden_mult=1, mini_batch=cfg.ttt_mini_batch,
                        base_lr=0.1, update=cfg.ttt_update or "hf", cg_iters=3 if cfg.cg_iters is None else cfg.cg_iters,
                        lag_distance=cfg.ttt_lag, lag_weight=0.1, compat="clean")
    torch.manual_seed(cfg.seed)
    model.ttt = TTTMemory(ttt_cfg).to(device=device)
    model.spec.ttt = ttt_cfg.to_dict()
    return model


def retarget_ttt(model, update: str | None, checkpoint_group: int, device):
    """The model's TTT block with update rule ``update`` (None: keep) and activation checkpointing over groups of
    ``checkpoint_group`` mini-batches; same weights (Muon adds its learned step)."""
    from ..memory.ttt import TTTMemory

    ttt_cfg = model.ttt.cfg
    new = replace(ttt_cfg, update=update or ttt_cfg.update, checkpoint_group=checkpoint_group)
    if new == ttt_cfg:
        return model
    layer = TTTMemory(new).to(device=device, dtype=model.ttt.dtype)
    missing, _ = layer.load_state_dict(model.ttt.state_dict(), strict=False)
    if any(not k.startswith("update.") for k in missing):
        raise ValueError(f"cannot switch the TTT update rule: missing {missing}")
    model.ttt = layer
    model.spec.ttt = new.to_dict()
    return model


def _write_model(folder: Path, model) -> None:
    """A whole trained model as an avmem model folder (weights no longer random)."""
    spec = model.spec
    model.spec = replace(spec, random_weights=False)
    try:
        model.save_pretrained(folder)
    finally:
        model.spec = spec


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _read_state(folder: Path, processes: int) -> dict:
    """A checkpoint's trainer state (step, per-process sample counts, fingerprint), checked.

    Raises:
        ValueError: unreadable, incomplete, or saved by a run with another number of processes (one line).
    """
    path = folder / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"resume: {path} is unreadable ({_first_line(exc)})") from None
    counts = isinstance(state, dict) and all(
        isinstance(state.get(k), list) and all(isinstance(n, int) and n >= 0 for n in state[k])
        for k in ("samples", "skipped"))
    if not counts or not isinstance(state.get("step"), int) or state["step"] < 0:
        raise ValueError(f"resume: {path} lacks a valid step and per-process sample counts")
    if len(state["samples"]) != processes or len(state["skipped"]) != processes:
        raise ValueError(f"resume: {folder} was saved by {len(state['samples'])} process(es), this run has "
                         f"{processes}")
    return state


def _load_tensors(path: Path):
    """A checkpoint file of tensors and plain values (``torch.load`` with ``weights_only``), on the CPU.

    Raises:
        ValueError: missing, damaged, or holding other objects (refused without unpickling them); one line.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"resume: {path} is missing") from None
    except (pickle.UnpicklingError, EOFError):
        raise ValueError(f"resume: {path} is damaged or holds more than tensors (refused without unpickling "
                         f"it)") from None
    except (OSError, RuntimeError) as exc:
        raise ValueError(f"resume: {path} is unreadable ({_first_line(exc)})") from None


def _restore(obj, state, path: Path) -> None:
    """``obj.load_state_dict(state)`` (optimizer, scheduler); ValueError in one line when ``state`` does not fit."""
    try:
        obj.load_state_dict(state)
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError, AttributeError) as exc:
        raise ValueError(f"resume: {path} does not fit this run ({_first_line(exc)})") from None


def _load_whole(module, folder: Path) -> None:
    """Resume: copy a saved avmem model folder's weights into the training module."""
    from ..model import load_model

    saved = load_model(folder, device=next(module.llm.parameters()).device)
    pairs = [(module.llm, saved.backbone.model), (module.ttt, saved.ttt), (module.audio, saved.audio)]
    for own, other in pairs:
        if (own is None) != (other is None):
            raise ValueError(f"resume: {folder} does not hold the same parts as this run")
        if own is not None:
            own_state = own.state_dict()
            other_state = other.state_dict()
            if set(own_state) != set(other_state) or any(own_state[k].shape != other_state[k].shape
                                                         for k in own_state):
                raise ValueError(f"resume: {folder} does not fit this run's model")
            own.load_state_dict({k: v.to(own_state[k].dtype) for k, v in other_state.items()})


def _write_adapter(folder: Path, state_dict: dict, model, adapter_config: dict) -> None:
    """Split the training module's state dict (``llm.*``, ``ttt.*``) into the release adapter."""
    from ..official_release import save_release_adapter
    from .lora import lora_state

    lora = {k[len("llm."):]: v for k, v in lora_state(state_dict).items() if k.startswith("llm.")}
    ttt_tensors = {k[len("ttt."):]: v for k, v in state_dict.items() if k.startswith("ttt.")}
    save_release_adapter(folder, lora, ttt_tensors, None if model.ttt is None else model.ttt.cfg, adapter_config)


def _load_trainables(module, adapter: Path) -> None:
    """Put a saved adapter's LoRA and TTT tensors back into the training module (resume).

    Raises:
        ValueError: a tensor this module does not have, has in another shape, or lacks.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from ..memory.ttt.official import native_key
    from ..official_release import ADAPTER_WEIGHTS

    try:
        tensors = load_file(str(adapter / ADAPTER_WEIGHTS))
    except (OSError, SafetensorError) as exc:
        raise ValueError(f"resume: {adapter / ADAPTER_WEIGHTS} is unreadable ({_first_line(exc)})") from None
    params = {n: p for n, p in module.llm.named_parameters() if "lora_" in n}
    loaded = set()
    for key, value in tensors.items():
        m = re.match(r"^base_model\.model\.(.+)\.lora_([AB])\.weight$", key)
        if not m:
            continue
        name = f"{m.group(1)}.lora_{m.group(2)}.default.weight"
        if name not in params or params[name].shape != value.shape:
            raise ValueError(f"resume: the adapter's '{key}' {list(value.shape)} does not fit this run's LoRA")
        with torch.no_grad():
            params[name].copy_(value)
        loaded.add(name)
    if loaded != set(params):
        raise ValueError(f"resume: the adapter lacks {len(set(params) - loaded)} LoRA tensors of this run")
    if module.ttt is not None:
        ttt = {native_key(k): v for k, v in tensors.items() if native_key(k) is not None}
        own = module.ttt.state_dict()
        if set(ttt) != set(own) or any(ttt[k].shape != own[k].shape for k in own):
            raise ValueError("resume: the adapter's TTT tensors do not match this run's TTT block")
        module.ttt.load_state_dict({k: v.to(own[k].dtype) for k, v in ttt.items()})
