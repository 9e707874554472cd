"""Train a TopK SAE on collected activations: one readable loop, data-parallel under ``accelerate launch``.

The recipe (Gao et al. 2024, "Scaling and evaluating sparse autoencoders", and their sparse_autoencoder code):
- activations are centred on their geometric median (b_pre starts there) and scaled so that the mean squared
  norm of a centred vector is d_in; the scale is folded back into the saved SAE, which reads raw activations;
- the encoder starts as the decoder's transpose; decoder rows stay unit norm after every step, and the part of
  their gradient parallel to them is removed first (it would only change their norm);
- loss = normalised MSE + auxk_coef * AuxK loss: the features that have not fired for ``dead_tokens`` vectors
  try to reconstruct the residual with their own top ``auxk``, which gives dead features a gradient. Unlike
  OpenAI's code the AuxK activations are taken before the ReLU: a dead feature whose pre-activation went
  negative still gets a gradient (with the ReLU, AuxK drove such features to zero and left them dead for good);
- Adam, linear warm-up, linear decay over the last fifth, gradient norm clipped at 1.

Checkpoints (``checkpoint/state.safetensors`` + ``checkpoint/state.json``) hold the SAE, Adam's state, the
dead-feature counters, the RNG state and the step; the data stream is a pure function of (seed, position), so a
resumed run gives the same parameters as one that went straight through.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from .errors import SAEError
from .metrics import FeatureStats, explained_variance
from .model import CONFIG_NAME, SAE, WEIGHTS_NAME, SAEConfig
from .store import ActivationStore, ShuffledStream, write_json

CHECKPOINT_DIR = "checkpoint"
LOG_NAME = "train_log.jsonl"


def _option(default: Any = MISSING, help: str = "", flag: str | None = None, cli: bool = True) -> Any:
    """A training option: its default, its ``--help`` text, and the command-line flag if not ``--<name>``."""
    return field(default=default, metadata={"help": help, "flag": flag, "cli": cli})


@dataclass
class TrainOptions:
    """Everything a training run takes, listed once: ``sae train``'s options are built from these fields."""

    acts: str = _option(help="the collected activations (a folder made by `sae collect`)")
    out: str = _option(help="where the SAE, its checkpoints and its training log go")
    n_features: int = _option(flag="--features", help="number of features n")
    k: int = _option(help="active features per vector")
    auxk: int | None = _option(None, "AuxK: dead features used per vector (default min(256, n/2); 0 = off)")
    auxk_coef: float = _option(1 / 32, "weight of the AuxK loss")
    dead_tokens: int | None = _option(None, "a feature is dead after this many vectors without firing (default: a "
                                            "tenth of --tokens, at most 10M)")
    batch_size: int = _option(4096, "vectors per step and process")
    lr: float = _option(4e-4, "learning rate (linear warm-up over 5%% of the steps, linear decay over the last 20%%)")
    tokens: int | None = _option(None, "training vectors in all (default: one pass over the shards)")
    seed: int = _option(0, "seed of the initialisation and the data order")
    block: str | None = _option(None, "which block, when --acts holds several")
    checkpoint_every: int = _option(500, "steps between checkpoints")
    log_every: int = _option(20, "steps between training-log lines")
    stop_after: int | None = _option(None, "stop after this step (continue later with --resume)")
    stats_tokens: int | None = _option(2_000_000, "vectors read for the features' typical values and frequencies")
    init_tokens: int = _option(16384, "vectors read to initialise the decoder bias (their geometric median) and the data scale")
    chunk_shards: int = _option(8, "activation shards shuffled together")
    resume: bool = _option(False, "continue the run in --out from its checkpoint")
    overwrite: bool = _option(False, "replace the run in --out")
    progress: bool = _option(True, "show a progress bar", cli=False)

    def check(self) -> None:
        if not isinstance(self.n_features, int) or self.n_features < 1:
            raise SAEError(f"features is {self.n_features!r}; it must be an integer >= 1")
        if not isinstance(self.k, int) or self.k < 1:
            raise SAEError(f"k is {self.k!r}; it must be an integer >= 1")
        if self.k >= self.n_features:
            raise SAEError(f"k is {self.k}; it must be smaller than features ({self.n_features})")
        if self.auxk is not None and not 0 <= self.auxk <= self.n_features:
            raise SAEError(f"auxk is {self.auxk}; allowed: 0 (off) .. features ({self.n_features})")
        for name in ("batch_size", "checkpoint_every", "log_every", "init_tokens"):
            if getattr(self, name) < 1:
                raise SAEError(f"{name.replace('_', '-')} is {getattr(self, name)}; it must be >= 1")
        if not self.lr > 0:
            raise SAEError(f"lr is {self.lr}; it must be > 0")
        if self.tokens is not None and self.tokens < 1:
            raise SAEError(f"tokens is {self.tokens}; it must be >= 1")


@dataclass
class Run:
    """Everything that makes two trainings the same run (checked on --resume)."""

    acts: str
    block: str
    n_features: int
    k: int
    auxk: int
    auxk_coef: float
    dead_tokens: int
    batch_size: int
    lr: float
    steps: int
    seed: int
    world_size: int


class TrainingModel(nn.Module):
    """The SAE's training forward pass in one module, so DistributedDataParallel sees every parameter."""

    def __init__(self, sae: SAE) -> None:
        super().__init__()
        self.sae = sae

    def forward(self, x: torch.Tensor, dead: torch.Tensor, auxk: int):
        raw = (x - self.sae.b_pre) @ self.sae.W_enc.T + self.sae.b_enc
        pre = torch.relu(raw)
        values, indices = pre.topk(self.sae.k, dim=-1)
        x_hat = self.sae.decode_sparse(values, indices)
        aux = None
        n_dead = int(dead.sum())
        if auxk and n_dead:
            aux_values, aux_indices = raw.masked_fill(~dead, -torch.inf).topk(min(auxk, n_dead), dim=-1)
            aux = nn.functional.embedding_bag(aux_indices, self.sae.W_dec, per_sample_weights=aux_values, mode="sum")
        return x_hat, values, indices, aux


def lr_at(step: int, steps: int, lr: float) -> float:
    """Linear warm-up over the first 5% (at most 100 steps), constant, linear decay over the last 20%."""
    warmup = max(1, min(100, steps // 20))
    decay_start = int(steps * 0.8)
    if step < warmup:
        return lr * (step + 1) / warmup
    if step >= decay_start:
        return lr * max(0.0, (steps - step) / max(1, steps - decay_start))
    return lr


def geometric_median(x: torch.Tensor, iterations: int = 50) -> torch.Tensor:
    """Weiszfeld's algorithm, started at the mean."""
    median = x.mean(0)
    for _ in range(iterations):
        weights = 1 / (x - median).norm(dim=1).clamp_min(1e-8)
        new = (weights[:, None] * x).sum(0) / weights.sum()
        if (new - median).norm() < 1e-7 * (1 + median.norm()):
            return new
        median = new
    return median


def project_decoder_gradient(sae: SAE) -> None:
    """Remove the part of each decoder row's gradient parallel to the row (rows are renormalised anyway)."""
    grad = sae.W_dec.grad
    if grad is not None:
        grad.sub_((grad * sae.W_dec).sum(dim=1, keepdim=True) * sae.W_dec)


def train(options: TrainOptions) -> Path:
    """Train (or resume) an SAE; returns the output folder. See ``sae train --help``."""
    from accelerate import Accelerator

    from .capture import multi_cpu

    options.check()
    store = ActivationStore(options.acts, options.block)
    accelerator = Accelerator(cpu=multi_cpu())
    world, rank = accelerator.num_processes, accelerator.process_index
    tokens = options.tokens or store.n_vectors
    steps = max(1, math.ceil(tokens / (options.batch_size * world)))
    auxk = min(256, options.n_features // 2) if options.auxk is None else options.auxk
    dead_tokens = options.dead_tokens or max(options.batch_size * world, min(10_000_000, tokens // 10))
    run = Run(str(store.folder.resolve()), store.manifest.block, options.n_features, options.k, auxk,
              options.auxk_coef, dead_tokens, options.batch_size, options.lr, steps, options.seed, world)
    out = Path(options.out)
    checkpoint = _claim_out(out, run, options, accelerator.is_main_process)
    out.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()

    sae = SAE(SAEConfig(d_in=store.d_in, n_features=options.n_features, k=options.k, site=store.manifest.site,
                        block=store.manifest.block, model=store.manifest.model, auxk=auxk or None))
    state = _initial_state(sae, store, options) if checkpoint is None else _read_checkpoint(sae, checkpoint)
    model = TrainingModel(sae)
    optimizer = torch.optim.Adam(sae.parameters(), lr=options.lr, betas=(0.9, 0.999), eps=6.25e-10)
    model, optimizer = accelerator.prepare(model, optimizer)
    sae = accelerator.unwrap_model(model).sae
    if "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
    since_fired = state["since_fired"].to(accelerator.device)
    scale, variance = state["scale"], state["variance"]
    numbers = list(range(len(store.shards)))
    mine = numbers[rank::world] if len(numbers) >= world else numbers
    stream = ShuffledStream(store, mine, options.batch_size, options.seed + (rank if len(numbers) < world else 0),
                            options.chunk_shards)
    step = state["step"]
    batches = stream.batches(step * options.batch_size)
    last_checkpoint = state["step"] if checkpoint is not None else None
    stop = min(steps, options.stop_after) if options.stop_after else steps
    bar = tqdm(total=steps, initial=step, desc="train", unit="step",
               disable=not (options.progress and accelerator.is_main_process))
    while step < stop:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, options.lr)
        x = next(batches).to(accelerator.device) / scale
        if not torch.isfinite(x).all():
            raise SAEError(f"activations contain NaN or inf at step {step} (shards {', '.join(stream.last_shards)}); "
                           f"training stopped; {_kept(out, last_checkpoint)}")
        dead = since_fired >= dead_tokens
        x_hat, values, indices, aux = model(x, dead, auxk)
        mse = (x_hat - x).pow(2).sum(-1).mean() / variance
        loss = mse
        if aux is not None:
            residual = (x - x_hat).detach()
            aux_loss = (aux - residual).pow(2).sum(-1).mean() / residual.pow(2).sum(-1).mean().clamp_min(1e-12)
            loss = loss + options.auxk_coef * aux_loss.nan_to_num(0)
        if not torch.isfinite(loss):
            raise SAEError(f"loss is {float(loss)} at step {step}; training stopped; {_kept(out, last_checkpoint)}")
        accelerator.backward(loss)
        project_decoder_gradient(sae)
        accelerator.clip_grad_norm_(sae.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sae.normalize_decoder()
        fired = torch.zeros_like(since_fired, dtype=torch.float32).index_fill_(0, indices[values > 0], 1.0)
        fired = accelerator.reduce(fired, reduction="sum") > 0
        since_fired = torch.where(fired, torch.zeros_like(since_fired), since_fired + options.batch_size * world)
        step += 1
        bar.update(1)
        if step % options.log_every == 0 or step == stop:
            _log(out, bar, accelerator, step, loss, mse, x, x_hat, values, since_fired >= dead_tokens)
        if step % options.checkpoint_every == 0 or step == stop:
            _save_checkpoint(out, sae, optimizer, since_fired, step, scale, variance, run, accelerator)
            last_checkpoint = step
    bar.close()
    if step < steps:
        if accelerator.is_main_process:
            print(f"stopped after step {step} of {steps}; continue with --resume")
        return out
    _save_final(out, sae, store, options, run, scale, accelerator, rank, world)
    return out


def _kept(out: Path, last_checkpoint: int | None) -> str:
    if last_checkpoint is None:
        return "no checkpoint was written yet"
    return f"the last good checkpoint (step {last_checkpoint}) is kept in '{out / CHECKPOINT_DIR}'"


def _claim_out(out: Path, run: Run, options: TrainOptions, is_main: bool) -> Path | None:
    """The checkpoint folder to resume from (None: start afresh); refuses to touch another run's folder."""
    checkpoint = out / CHECKPOINT_DIR
    has_run = (checkpoint / "state.json").exists() or (out / WEIGHTS_NAME).exists()
    if not has_run:
        return None
    if options.resume and (checkpoint / "state.json").exists():
        saved = _read_json(checkpoint / "state.json")["run"]
        changed = [f"{key} ({saved.get(key)!r} -> {value!r})" for key, value in asdict(run).items()
                   if saved.get(key) != value]
        if not changed:
            return checkpoint
        if not options.overwrite:
            raise SAEError(f"out folder '{out}' holds a different run; it differs in {', '.join(changed)}; "
                           "use --overwrite to replace it or another --out")
    elif not options.overwrite:
        raise SAEError(f"out folder '{out}' already holds a training run; use --resume to continue it or "
                       "--overwrite to replace it")
    if is_main:
        shutil.rmtree(checkpoint, ignore_errors=True)
        for name in (WEIGHTS_NAME, CONFIG_NAME, LOG_NAME):
            (out / name).unlink(missing_ok=True)
    return None


def _initial_state(sae: SAE, store: ActivationStore, options: TrainOptions) -> dict[str, Any]:
    """Seeded init, identical on every process: b_pre at the geometric median, data scale from a sample."""
    sample = store.sample(options.init_tokens)
    if not torch.isfinite(sample).all():
        raise SAEError(f"activations in '{store.folder}' contain NaN or inf (found while initialising, step 0)")
    median = geometric_median(sample)
    scale = float(((sample - median).pow(2).sum(1).mean() / sample.shape[1]).sqrt().clamp_min(1e-8))
    sae.reset_parameters(torch.Generator().manual_seed(options.seed))
    with torch.no_grad():
        sae.b_pre.copy_(median / scale)
    variance = float(((sample - sample.mean(0)) / scale).pow(2).sum(1).mean().clamp_min(1e-8))
    return {"step": 0, "scale": scale, "variance": variance,
            "since_fired": torch.zeros(sae.n_features, dtype=torch.long)}


def _read_json(file: Path) -> dict[str, Any]:
    try:
        return json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SAEError(f"checkpoint file '{file}' cannot be read: {exc}") from None


def _read_checkpoint(sae: SAE, folder: Path) -> dict[str, Any]:
    meta = _read_json(folder / "state.json")
    try:
        tensors = load_file(str(folder / "state.safetensors"))
    except (SafetensorError, OSError) as exc:
        raise SAEError(f"checkpoint '{folder / 'state.safetensors'}' is truncated or corrupted: {exc}") from None
    sae.load_state_dict({name[len("sae."):]: t for name, t in tensors.items() if name.startswith("sae.")})
    optimizer = {"state": {}, "param_groups": meta["param_groups"]}
    for i in range(len(list(sae.parameters()))):
        if f"adam.{i}.step" in tensors:
            optimizer["state"][i] = {key: tensors[f"adam.{i}.{key}"] for key in ("step", "exp_avg", "exp_avg_sq")}
    torch.set_rng_state(tensors["rng"])
    return {"step": meta["step"], "scale": meta["scale"], "variance": meta["variance"],
            "since_fired": tensors["since_fired"], "optimizer": optimizer}


def _save_checkpoint(out: Path, sae: SAE, optimizer, since_fired: torch.Tensor, step: int, scale: float,
                     variance: float, run: Run, accelerator) -> None:
    if not accelerator.is_main_process:
        accelerator.wait_for_everyone()
        return
    if not all(torch.isfinite(p).all() for p in sae.parameters()):
        raise SAEError(f"parameters became NaN or inf at step {step}; the last good checkpoint is kept")
    folder = out / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    optimizer_state = optimizer.state_dict()
    tensors = {f"sae.{name}": t.detach().cpu().contiguous() for name, t in sae.state_dict().items()}
    for i, entry in optimizer_state["state"].items():
        for key in ("step", "exp_avg", "exp_avg_sq"):
            tensors[f"adam.{i}.{key}"] = torch.as_tensor(entry[key]).detach().cpu().contiguous()
    tensors["since_fired"] = since_fired.cpu().contiguous()
    tensors["rng"] = torch.get_rng_state()
    tmp = folder / "state.safetensors.tmp"
    save_file(tensors, str(tmp))
    tmp.replace(folder / "state.safetensors")
    write_json(folder / "state.json", {"step": step, "scale": scale, "variance": variance, "run": asdict(run),
                                       "param_groups": optimizer_state["param_groups"]})
    accelerator.wait_for_everyone()


def _log(out: Path, bar, accelerator, step: int, loss, mse, x, x_hat, values, dead: torch.Tensor) -> None:
    x_hat = x_hat.detach()
    record = {"step": step, "loss": float(loss.detach()), "fvu": float(mse.detach()),
              "explained_variance": explained_variance(x, x_hat),
              "l0": float((values > 0).sum(-1).float().mean()), "dead_fraction": float(dead.float().mean())}
    bar.set_postfix(ev=f"{record['explained_variance']:.3f}", l0=f"{record['l0']:.1f}",
                    dead=f"{record['dead_fraction']:.3f}")
    if accelerator.is_main_process:
        with open(out / LOG_NAME, "a") as log:
            log.write(json.dumps(record) + "\n")


@torch.no_grad()
def _save_final(out: Path, sae: SAE, store: ActivationStore, options: TrainOptions, run: Run, scale: float,
                accelerator, rank: int, world: int) -> None:
    """Fold the data scale back in, measure sigma_f and firing frequency over the data, save the SAE."""
    final = SAE(sae.config).to(accelerator.device)
    final.load_state_dict(sae.state_dict())
    final.b_enc.mul_(scale)
    final.b_pre.mul_(scale)
    numbers = list(range(len(store.shards)))
    share = numbers[rank::world] if len(numbers) >= world else (numbers if rank == 0 else [])
    limit = None if options.stats_tokens is None else math.ceil(options.stats_tokens / world)
    stats = FeatureStats(final.n_features)
    for x, _ in store.iter_batches(options.batch_size, max_vectors=limit, shard_numbers=share):
        x = x.to(accelerator.device)
        values, indices = final.encode_topk(x)
        stats.update(values, indices, x, final.decode_sparse(values, indices))
    sums = torch.cat([stats.count, stats.total, torch.tensor([stats.n_vectors, stats.squared_error, stats.sum_x2]),
                      stats.sum_x if stats.sum_x is not None else torch.zeros(final.d_in, dtype=torch.float64)])
    sums = accelerator.reduce(sums.to(accelerator.device), reduction="sum").cpu()
    n = final.n_features
    stats.count, stats.total = sums[:n], sums[n:2 * n]
    stats.n_vectors, stats.squared_error, stats.sum_x2 = int(sums[2 * n]), float(sums[2 * n + 1]), float(sums[2 * n + 2])
    stats.sum_x = sums[2 * n + 3:]
    final.set_feature_statistics(stats.mean, stats.frequency)
    final.config.training = {**asdict(run), "scale": scale, "stats_vectors": stats.n_vectors,
                             "explained_variance": 1 - stats.fvu, "dead_fraction": stats.dead_fraction}
    if accelerator.is_main_process:
        final.save_pretrained(out)
    accelerator.wait_for_everyone()
