"""Train the toy model: ``python -m paint_app.toyworld.train [--out paint_app/assets/toy] [--work runs/toy]``.

Three stages, each resumable from checkpoints in ``--work`` (safetensors + JSON, no pickles):
1. the VAE, on 32x32 crops of rendered scenes (convolutional, so crops teach it the full image);
2. the training set: ``--scenes`` seeded scenes encoded once to latents;
3. the UNet and text encoder together, v-prediction on a zero-terminal-SNR schedule, captions drawn afresh
   from the grammar each time a scene is seen, 10% empty captions for classifier-free guidance, EMA weights;
   timesteps half on those the default 8-step sampler visits, leaning to high noise from ``--high-noise-from``.
The EMA UNet with the text encoder and VAE is saved in fp16 with ``save_pretrained`` in ``--out``.
It uses every core by default; on a CPU shared with other work pass ``--threads 1``: one thread is then much
faster than two (no waiting on a descheduled OpenMP thread at every op).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from . import TOY_DIR
from .model import (
    BLOCK_ROLES,
    MAX_TOKENS,
    TEXT_ENTRIES,
    count_parameters,
    make_pipeline,
    make_scheduler,
    make_text_encoder,
    make_tokenizer,
    make_unet,
    make_vae,
)
from .world import SIZE, caption, partial_caption, render, scene_for_seed

TRAIN_SEED_BASE = 0  # training scenes use seeds [0, scenes); held-out evaluation uses seeds >= HELD_OUT_SEED_BASE
HELD_OUT_SEED_BASE = 10_000_000
TOY_REFERENCE = "reference.png"
REFERENCE = {"prompt": "a red circle", "seed": 0}
DEFAULTS = {"width": SIZE, "height": SIZE, "steps": 8, "guidance": 3.0}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m paint_app.toyworld.train", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=TOY_DIR, help="where the pipeline is saved")
    parser.add_argument("--work", type=Path, default=Path("runs") / "toy", help="checkpoints and caches")
    parser.add_argument("--overwrite", action="store_true", help="replace a finished model in --out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:N, mps")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="CPU threads for torch (default: every core)")
    parser.add_argument("--vae-steps", type=int, default=800)
    parser.add_argument("--vae-batch", type=int, default=32)
    parser.add_argument("--scenes", type=int, default=16_000, help="training scenes (encoded once)")
    parser.add_argument("--unet-steps", type=int, default=5400)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--pooled-text", action=argparse.BooleanOptionalAction, default=True,
                        help="also feed the pooled caption into the UNet's time embedding, as the shipped weights "
                             "do (--no-pooled-text: the previous architecture)")
    parser.add_argument("--text-entry", choices=TEXT_ENTRIES, default="all",
                        help="where the caption enters the UNet: every block (all), only the two transformer "
                             "blocks of the first 16x16 level (first) or only the middle block (middle)")
    parser.add_argument("--caption-dropout", type=float, default=0.0,
                        help="leave each object, and each object's colour, out of a training caption with this "
                             "probability (0: every object and colour is named)")
    parser.add_argument("--high-noise-from", type=int, default=1800,
                        help="UNet step from which timesteps lean to high noise")
    args = parser.parse_args(argv)
    if not 0.0 <= args.caption_dropout <= 1.0:
        parser.error(f"--caption-dropout is {args.caption_dropout}; allowed: a probability from 0 to 1")
    return args


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints: module states and AdamW state in one safetensors file, step and param groups in its metadata.


def save_checkpoint(path: Path, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer,
                    step: int, extra: dict | None = None) -> None:
    tensors = {f"{name}/{key}": value.detach().float().cpu().contiguous()
               for name, module in modules.items() for key, value in module.state_dict().items()}
    state = optimizer.state_dict()
    for index, entry in state["state"].items():
        for key, value in entry.items():
            tensors[f"optimizer/{index}/{key}"] = torch.as_tensor(value).float().cpu().contiguous()
    meta = {"step": str(step), "param_groups": json.dumps(state["param_groups"]), "extra": json.dumps(extra or {})}
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)


def load_checkpoint(path: Path, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer) -> int:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        meta = handle.metadata()
    tensors = load_file(str(path))
    for name, module in modules.items():
        prefix = f"{name}/"
        module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    opt_state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer/"):
            _, index, field = key.split("/")
            opt_state.setdefault(int(index), {})[field] = value
    optimizer.load_state_dict({"state": opt_state, "param_groups": json.loads(meta["param_groups"])})
    return int(meta["step"])


def lr_at(step: int, total: int, peak: float, warmup: int = 50) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def images_to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    array = np.stack(images).astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


# ----------------------------------------------------------------------------------------------------------------
# Stage 1: VAE.


def train_vae(args: argparse.Namespace, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(args.seed)
    vae = make_vae().to(device)
    done, ckpt = args.work / "vae.safetensors", args.work / "vae_ckpt.safetensors"
    if done.exists():
        vae.load_state_dict(load_file(str(done)))
        return vae.eval()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.lr, weight_decay=0.0)
    step = load_checkpoint(ckpt, {"vae": vae}, optimizer) if ckpt.exists() else 0
    print(f"VAE: {count_parameters(vae) / 1e6:.2f} M parameters, steps {step}..{args.vae_steps}", flush=True)
    bar = tqdm(total=args.vae_steps, initial=step, desc="vae", mininterval=20, file=sys.stdout)
    vae.train()
    while step < args.vae_steps:
        rng = np.random.default_rng([args.seed, 1, step])
        crops = []
        for _ in range(args.vae_batch):
            image = render(scene_for_seed(int(rng.integers(2**31)) + HELD_OUT_SEED_BASE * 10)).image
            y, x = rng.integers(0, (SIZE - 32) // 4 + 1, 2) * 4  # on the latent grid, as whole images are
            crops.append(image[y:y + 32, x:x + 32])
        batch = images_to_tensor(crops).to(device)
        set_lr(optimizer, lr_at(step, args.vae_steps, args.lr))
        posterior = vae.encode(batch).latent_dist
        recon = vae.decode(posterior.sample()).sample
        loss = F.mse_loss(recon, batch) + 0.5 * F.l1_loss(recon, batch) + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        if step % args.checkpoint_every == 0 or step == args.vae_steps:
            save_checkpoint(ckpt, {"vae": vae}, optimizer, step)
    bar.close()
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(done))
    return vae.eval()


# ----------------------------------------------------------------------------------------------------------------
# Stage 2: encode the training scenes once.


@torch.no_grad()
def encode_scenes(args: argparse.Namespace, vae: torch.nn.Module, device: torch.device) -> torch.Tensor:
    """Latent means of the training scenes, unscaled [N, 4, 16, 16]."""
    cache = args.work / "latents.safetensors"
    if cache.exists():
        latents = load_file(str(cache))["latents"]
        if len(latents) == args.scenes:
            return latents
    chunks = []
    for start in tqdm(range(0, args.scenes, 256), desc="encode", mininterval=20, file=sys.stdout):
        seeds = range(TRAIN_SEED_BASE + start, TRAIN_SEED_BASE + min(args.scenes, start + 256))
        batch = images_to_tensor([render(scene_for_seed(s)).image for s in seeds]).to(device)
        chunks.append(vae.encode(batch).latent_dist.mean.cpu())
    latents = torch.cat(chunks)
    save_file({"latents": latents.contiguous()}, str(cache))
    return latents


# ----------------------------------------------------------------------------------------------------------------
# Stage 3: UNet + text encoder.


def training_timesteps(rng: np.random.Generator, n: int, default_steps: int, high_noise: bool = True) -> torch.Tensor:
    """Half on the trailing timesteps the default few-step sampler visits, half spread over [0, 1000).

    With ``high_noise`` both halves lean to high noise, where the caption decides the layout, shape and colour
    (without it the model learns colours and backgrounds but leaves layout and shape to the noise).
    """
    visited = np.round(np.arange(1000, 0, -1000 / default_steps)).astype(int) - 1  # high noise first
    if high_noise:
        weights = np.linspace(2.0, 0.5, len(visited))
        on_grid = rng.choice(visited, n, p=weights / weights.sum())
        spread = np.floor(1000 * (1 - (1 - rng.random(n)) ** 2)).astype(int)  # density rising with t
    else:
        on_grid = rng.choice(visited, n)
        spread = rng.integers(0, 1000, n)
    pick = rng.random(n) < 0.5
    return torch.from_numpy(np.where(pick, on_grid, spread)).long()


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=MAX_TOKENS, truncation=True,
                     return_tensors="pt").input_ids


def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p, 1.0 - decay)


def train_unet(args: argparse.Namespace, latents: torch.Tensor, scaling: float, device: torch.device):
    torch.manual_seed(args.seed + 2)
    tokenizer = make_tokenizer()
    unet, text_encoder = make_unet(args.pooled_text, args.text_entry).to(device), make_text_encoder(tokenizer).to(device)
    ema_unet, ema_text = make_unet(args.pooled_text, args.text_entry).to(device), make_text_encoder(tokenizer).to(device)
    ema_unet.load_state_dict(unet.state_dict())
    ema_text.load_state_dict(text_encoder.state_dict())
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    modules = {"unet": unet, "text": text_encoder, "ema_unet": ema_unet, "ema_text": ema_text}
    ckpt = args.work / "unet_ckpt.safetensors"
    step = load_checkpoint(ckpt, modules, optimizer) if ckpt.exists() else 0
    print(f"UNet: {count_parameters(unet) / 1e6:.2f} M, text encoder: {count_parameters(text_encoder) / 1e6:.2f} M "
          f"parameters; steps {step}..{args.unet_steps}, batch {args.batch}", flush=True)
    scheduler = make_scheduler()
    scenes_cache: dict[int, object] = {}
    bar = tqdm(total=args.unet_steps, initial=step, desc="unet", mininterval=30, file=sys.stdout)
    unet.train()
    text_encoder.train()
    start = time.perf_counter()
    while step < args.unet_steps:
        rng = np.random.default_rng([args.seed, 3, step])
        index = rng.integers(0, len(latents), args.batch)
        captions = []
        for i in index.tolist():
            scene = scenes_cache.get(i) or scenes_cache.setdefault(i, scene_for_seed(TRAIN_SEED_BASE + i))
            if rng.random() < 0.1:
                captions.append("")
            elif args.caption_dropout > 0:
                captions.append(partial_caption(scene, rng, args.caption_dropout))
            else:
                captions.append(caption(scene, rng))
        x0 = latents[torch.from_numpy(index)].to(device) * scaling
        noise = torch.from_numpy(rng.standard_normal(x0.shape).astype(np.float32)).to(device)
        t = training_timesteps(rng, args.batch, DEFAULTS["steps"], high_noise=step >= args.high_noise_from).to(device)
        noisy = scheduler.add_noise(x0, noise, t)
        target = scheduler.get_velocity(x0, noise, t)
        context = text_encoder(tokenize(tokenizer, captions).to(device))[0]
        loss = F.mse_loss(unet(noisy, t, context).sample, target)
        set_lr(optimizer, lr_at(step, args.unet_steps, args.lr))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        step += 1
        decay = min(0.995, (1 + step) / (10 + step))
        update_ema(ema_unet, unet, decay)
        update_ema(ema_text, text_encoder, decay)
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        if step % args.checkpoint_every == 0 or step == args.unet_steps:
            save_checkpoint(ckpt, modules, optimizer, step)
            print(f"step {step} loss {loss.item():.4f} ({time.perf_counter() - start:.0f} s this run)", flush=True)
    bar.close()
    return tokenizer, ema_unet.eval(), ema_text.eval()


# ----------------------------------------------------------------------------------------------------------------


def is_finished(out: Path) -> bool:
    return (out / "model_index.json").exists()


def save_assets(out: Path, vae, text_encoder, tokenizer, unet, info: dict) -> None:
    pipe = make_pipeline(vae, text_encoder, tokenizer, unet)
    pipe.to(torch.device("cpu"), torch.float16)
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out, safe_serialization=True)
    file = out / "paint_app.json"
    previous = json.loads(file.read_text()) if file.exists() else {}  # keep choices made later (SAE blocks...)
    defaults = {"blocks": BLOCK_ROLES[info.get("text_entry", "all")], **previous, **DEFAULTS, "sae_dir": "saes"}
    file.write_text(json.dumps(defaults, indent=2) + "\n")
    (out / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    write_reference(out)


def write_reference(out: Path) -> None:
    """A reference generation by the saved weights (loaded as the app loads them), to catch silent drift."""
    from paint_app.engine import Engine
    from paint_app.models import LoadedModel, profile_for
    from paint_app.session import Session
    from sae.pipelines import load_diffusers_pipeline

    pipe = load_diffusers_pipeline(str(out), device="cpu")
    engine = Engine(LoadedModel("toy", pipe, profile_for(str(out), pipe), pipe.unet.device, pipe.unet.dtype))
    settings = dict(REFERENCE, steps=DEFAULTS["steps"], guidance=DEFAULTS["guidance"])
    engine.generate(Session(model="toy", width=SIZE, height=SIZE, **settings)).save(out / TOY_REFERENCE)
    (out / "reference.json").write_text(json.dumps(settings, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if is_finished(args.out) and not args.overwrite:
        print(f"{Path(sys.argv[0]).name}: error: {args.out} already holds a finished model; "
              "pass --overwrite to replace it", file=sys.stderr)
        return 2
    from sae.errors import SAEError
    from sae.pipelines import pick_device

    try:
        device = pick_device(args.device)
    except SAEError as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    if device.type == "cuda":
        # TF32 convolutions (PyTorch's cuDNN default) cost this small model its quality: on an H200 the VAE's
        # held-out reconstruction error doubled with them (0.021 vs 0.011 without, 0.010 on a CPU).
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    vae = train_vae(args, device)
    for p in vae.parameters():
        p.requires_grad_(False)
    latents = encode_scenes(args, vae, device)
    scaling = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scaling)
    tokenizer, unet, text_encoder = train_unet(args, latents, scaling, device)
    info = {"seed": args.seed, "vae_steps": args.vae_steps, "vae_batch": args.vae_batch, "scenes": args.scenes,
            "unet_steps": args.unet_steps, "high_noise_from": args.high_noise_from, "pooled_text": args.pooled_text,
            "text_entry": args.text_entry, "caption_dropout": args.caption_dropout,
            "batch": args.batch, "lr": args.lr, "scaling_factor": scaling,
            "device": str(device), "threads": args.threads,
            "wall_seconds_last_run": round(time.perf_counter() - started, 1)}
    if is_finished(args.out) and not args.overwrite:  # it may have appeared while we trained
        print(f"train: error: {args.out} already holds a finished model; pass --overwrite", file=sys.stderr)
        return 2
    save_assets(args.out, vae.cpu(), text_encoder.cpu(), tokenizer, unet.cpu(), info)
    print(f"saved the toy pipeline in {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
