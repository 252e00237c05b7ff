"""The training loop on Hugging Face ``accelerate``: one process or many (``accelerate launch`` / ``torchrun``:
DDP, FSDP or DeepSpeed from the launcher's config; the shipped ones are in ``avmem/train/configs/``).

Output folder (loads with :func:`avmem.load_model`, like the official release)::

    OUT/base/                  release base: backbone + audio encoder (written once, before adapters)
    OUT/adapter/               final adapter: LoRA + TTT in the release key layout, avmem_ttt.json
    OUT/checkpoint-N/adapter/  the adapter at step N, and base -> ../base
    OUT/checkpoint-N/          trainer_state.json, optimizer.pt, scheduler.pt, rng_state_R.pt (resume)
    OUT/logs/                  tensorboard events (loss, lr, skipped samples)
"""

from __future__ import annotations

import json
import math
import os
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
    from ..official_release import save_release_adapter, save_release_base
    from ..session import SessionSettings
    from .data import VideoQADataset, check_media, collate_single, load_records
    from .forward import TrainableAVMem
    from .lora import add_lora, lora_state

    cfg.check()
    out = Path(cfg.output_dir)
    resume_dir = None
    if cfg.resume is not None:
        resume_dir = latest_checkpoint(out) if cfg.resume == "latest" else Path(cfg.resume)
        if resume_dir is None or not (resume_dir / STATE_FILE).is_file():
            raise ValueError(f"resume: no checkpoint with {STATE_FILE} in "
                             f"{out if cfg.resume == 'latest' else cfg.resume}")
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
                              dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))
    set_seed(cfg.seed + accelerator.process_index)
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
    if model.ttt is not None:
        model = _retarget_ttt(model, cfg, accelerator.device)
        model = _with_cg_iters(model, cfg.cg_iters)
    if accelerator.is_main_process and not (out / "base" / "config.json").is_file():
        save_release_base(model, out / "base")
    accelerator.wait_for_everyone()
    adapter_config = add_lora(model, cfg.lora)
    if model.ttt is not None:
        model.ttt.float().requires_grad_(cfg.use_ttt)
    for p in model.backbone.model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    if model.audio is not None:
        model.audio.requires_grad_(False)
    if cfg.gradient_checkpointing:
        model.backbone.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.backbone.model.train()
    model.backbone.model.model.visual.eval()

    settings = SessionSettings(fps=cfg.fps, max_pixels=cfg.max_pixels, min_pixels=cfg.min_pixels,
                               video_tokens=cfg.video_tokens, audio_tokens=cfg.audio_tokens,
                               use_audio=cfg.use_audio, use_ttt=cfg.use_ttt)
    settings.check(model)
    policy = None
    if cfg.reader == "omnimem":
        budgets = replace(settings, reader="omnimem", budget_file=cfg.budget_file,
                          read_tokens=cfg.read_tokens).budgets(model)
        policy = OmniMemPolicy(budgets, cfg.read_chunk, cfg.omni_lambda)
    module = TrainableAVMem(model, settings, policy)
    groups = module.trainable_parameters()
    if not groups["ttt"] and not groups["lora"]:
        raise ValueError("nothing to train")
    optimizer = torch.optim.AdamW(
        [{"params": groups["ttt"], "lr": cfg.ttt_lr if cfg.ttt_lr is not None else cfg.lr},
         {"params": groups["lora"], "lr": cfg.lr}], weight_decay=cfg.weight_decay)

    dataset = VideoQADataset(records, fps=cfg.fps, max_frames=cfg.max_frames, max_pixels=cfg.max_pixels,
                             min_pixels=cfg.min_pixels, factor=model.backbone.vision.factor)
    loader = DataLoader(dataset, batch_size=1, shuffle=True, num_workers=cfg.num_workers,
                        collate_fn=collate_single, generator=torch.Generator().manual_seed(cfg.seed))
    module, optimizer, loader = accelerator.prepare(module, optimizer, loader)
    per_epoch = math.ceil(len(loader) / cfg.grad_accum)
    total = cfg.max_steps or per_epoch * cfg.epochs
    warmup = int(cfg.warmup_ratio * max(1, total - cfg.ttt_only_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer,
        [_lr_lambda(total, warmup), _lr_lambda(total, warmup, hold=cfg.ttt_only_steps)])

    step, skipped, seen, epoch, done_in_epoch = 0, 0, 0, 0, 0
    engine_state = accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP)
    if resume_dir is not None:
        state = json.loads((resume_dir / STATE_FILE).read_text())
        _load_trainables(accelerator.unwrap_model(module), resume_dir / "adapter")
        if engine_state:
            accelerator.load_state(str(resume_dir / "engine"))
        else:
            optimizer.load_state_dict(torch.load(resume_dir / "optimizer.pt", map_location="cpu", weights_only=True))
        scheduler.load_state_dict(torch.load(resume_dir / "scheduler.pt", map_location="cpu", weights_only=True))
        rng = resume_dir / f"rng_state_{accelerator.process_index}.pt"
        if rng.is_file():
            torch.set_rng_state(torch.load(rng, weights_only=True))
        step, skipped, seen = state["step"], state["skipped"], state["samples"]
        epoch, done_in_epoch = divmod(step * cfg.grad_accum, len(loader))
        _log(accelerator, f"resumed from {resume_dir} at step {step}")

    if accelerator.is_main_process and cfg.report_to != "none":
        accelerator.init_trackers("logs", config={k: v for k, v in vars(cfg).items()
                                                  if isinstance(v, (int, float, str, bool))})
    _log(accelerator, f"{len(records)} samples, {accelerator.num_processes} process(es) on {accelerator.device}, "
                      f"{sum(p.numel() for g in groups.values() for p in g):,} trainable parameters, {total} steps")

    def save(folder: Path) -> None:
        state_dict = accelerator.get_state_dict(module)
        if engine_state:
            accelerator.save_state(str(folder / "engine"))
        if accelerator.is_main_process:
            _write_adapter(folder / "adapter", state_dict, model, adapter_config, save_release_adapter, lora_state)
            if folder != out and not (folder / "base").exists():
                os.symlink("../base", folder / "base")
            if not engine_state:
                torch.save(optimizer.state_dict(), folder / "optimizer.pt")
            torch.save(scheduler.state_dict(), folder / "scheduler.pt")
            (folder / STATE_FILE).write_text(json.dumps(
                {"step": step, "samples": seen, "skipped": skipped, "epoch": epoch}, indent=2))
        torch.save(torch.get_rng_state(), _mkdir(folder) / f"rng_state_{accelerator.process_index}.pt")
        accelerator.wait_for_everyone()

    losses: list[float] = []
    window: list[float] = []
    progress = _progress(accelerator, total, step)
    module.train()
    while step < total:
        loader.set_epoch(epoch)  # the order of epoch e depends on (seed, e) only: resuming replays it
        batches = accelerator.skip_first_batches(loader, done_in_epoch) if done_in_epoch else loader
        done_in_epoch = 0
        for sample in batches:
            with accelerator.accumulate(module):
                from .data import Skipped

                if isinstance(sample, Skipped):
                    skipped += 1
                    _log(accelerator, f"skipped {sample.source}: {sample.reason}")
                loss = module(sample)
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(module.parameters(), cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            seen += 1
            if not isinstance(sample, Skipped):
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
                save(_mkdir(out / f"checkpoint-{step}"))
            if step >= total:
                break
        epoch += 1
    save(_mkdir(out / f"checkpoint-{step}"))
    if accelerator.is_main_process:
        _write_adapter(out / "adapter", accelerator.get_state_dict(module), model, adapter_config,
                       save_release_adapter, lora_state)
    digests = _rank_digests(accelerator, groups)
    if accelerator.is_main_process:
        (out / "rank_digests.json").write_text(json.dumps(digests, indent=1))
    if len(set(digests)) != 1:
        raise RuntimeError(f"ranks ended with different weights: {digests}")
    totals = accelerator.reduce(torch.tensor([seen, skipped], dtype=torch.float64, device=accelerator.device),
                                reduction="sum")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    module.eval()
    return TrainResult(steps=step, samples=int(totals[0]), skipped=int(totals[1]), losses=losses, output_dir=out,
                       seconds=time.perf_counter() - start_time, is_main=accelerator.is_main_process,
                       rank_digests=digests, model=model)


def _rank_digests(accelerator, groups: dict) -> list[str]:
    """SHA-256 of every rank's trainable weights (bitwise), gathered: replicas must agree after training."""
    import hashlib

    from accelerate.utils import gather_object

    h = hashlib.sha256()
    for name in sorted(groups):
        for p in groups[name]:
            h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return list(gather_object([h.hexdigest()]))


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
    """Add a freshly initialised TTT block (seeded by ``cfg.seed``) to a model that has none."""
    from ..memory.ttt import TTTConfig, TTTMemory

    if model.ttt is not None:
        raise ValueError(f"new_ttt: {cfg.model} already has a TTT block (drop new_ttt to fine-tune it)")
    ttt_cfg = TTTConfig(dim=model.hidden_size, num_heads=cfg.ttt_heads, hidden_mult=1, mini_batch=cfg.ttt_mini_batch,
                        base_lr=0.1, update=cfg.ttt_update or "hf", cg_iters=3 if cfg.cg_iters is None else cfg.cg_iters,
                        lag_distance=cfg.ttt_lag, lag_weight=0.1, compat="clean")
    torch.manual_seed(cfg.seed)
    model.ttt = TTTMemory(ttt_cfg).to(device=device)
    model.spec.ttt = ttt_cfg.to_dict()
    return model


def _retarget_ttt(model, cfg: TrainConfig, device):
    """Apply the config's TTT update rule and activation checkpointing (same weights; Muon adds its step)."""
    from ..memory.ttt import TTTMemory

    ttt_cfg = model.ttt.cfg
    new = replace(ttt_cfg, update=cfg.ttt_update or ttt_cfg.update, checkpoint_group=cfg.ttt_checkpoint_group)
    if new == ttt_cfg:
        return model
    layer = TTTMemory(new).to(device=device, dtype=model.ttt.dtype)
    missing, _ = layer.load_state_dict(model.ttt.state_dict(), strict=False)
    if any(not k.startswith("update.") for k in missing):
        raise ValueError(f"cannot switch the TTT update rule: missing {missing}")
    model.ttt = layer
    model.spec.ttt = new.to_dict()
    return model


def _write_adapter(folder: Path, state_dict: dict, model, adapter_config: dict, save_release_adapter,
                   lora_state) -> None:
    """Split the training module's state dict (``llm.*``, ``ttt.*``) into the release adapter."""
    lora = {k[len("llm."):]: v for k, v in lora_state(state_dict).items() if k.startswith("llm.")}
    ttt_tensors = {k[len("ttt."):]: v for k, v in state_dict.items() if k.startswith("ttt.")}
    save_release_adapter(folder, lora, ttt_tensors, model.ttt.cfg, adapter_config)


def _load_trainables(module, adapter: Path) -> None:
    """Put a saved adapter's LoRA and TTT tensors back into the training module (resume)."""
    from safetensors.torch import load_file

    from ..memory.ttt.official import native_key
    from ..official_release import ADAPTER_WEIGHTS

    tensors = load_file(str(adapter / ADAPTER_WEIGHTS))
    params = dict(module.llm.named_parameters())
    for key, value in tensors.items():
        m = re.match(r"^base_model\.model\.(.+)\.lora_([AB])\.weight$", key)
        if m:
            name = f"{m.group(1)}.lora_{m.group(2)}.default.weight"
            if name not in params:
                raise ValueError(f"resume: the adapter's '{key}' has no LoRA parameter here (different lora config?)")
            with torch.no_grad():
                params[name].copy_(value)
    ttt = {native_key(k): v for k, v in tensors.items() if native_key(k) is not None}
    if module.ttt is not None:
        module.ttt.load_state_dict({k: v.to(module.ttt.dtype) for k, v in ttt.items()})
