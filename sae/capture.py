"""Read UNet blocks' activations during a diffusers pipeline run.

Two ways in, both built on forward hooks (``sae.hooks``) that are always removed, even after an error:

- ``capture_activations(pipe, blocks, site, **pipeline_kwargs)`` runs the pipeline once and returns
  ``{block: tensor [steps, batch, H, W, C]}`` (float32 on the CPU), for small jobs such as an inspector::

      acts = capture_activations(pipe, ["mid_block.attentions.0"], "delta", prompt="a red circle",
                                 num_inference_steps=4, generator=torch.Generator().manual_seed(0))
      acts["mid_block.attentions.0"].shape   # [4, 1, 8, 8, 64]

- ``with capture(pipe, blocks, site, sink=fn) as cap: pipe(...)`` streams instead: ``fn(block, step, value)`` is
  called once per UNet call with ``value`` [batch, H, W, C] (on the block's device and dtype), so memory stays
  flat; without a sink the values are kept in ``cap.values[block]`` (one [batch, H, W, C] per step).

The site is ``delta`` (the block's update h_out - h_in, as SAEPaint) or ``output`` (h_out). ``step`` counts the
UNet calls made inside the context, i.e. denoising steps. With classifier-free guidance the UNet batch is
[uncond, cond]; only the cond half is kept unless ``cond_only=False``. ``steps`` keeps only those step indices.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .errors import SAEError
from .hooks import block_input, block_output, forward_hooks, site_value
from .model import SITES
from .pipelines import get_block, load_diffusers_pipeline, unet_blocks
from .store import (
    MANIFEST_NAME,
    PROMPTS_NAME,
    Manifest,
    list_shards,
    read_manifest,
    shard_length,
    shard_name,
    write_json,
    write_manifest,
    write_shard,
)

Sink = Callable[[str, int, torch.Tensor], None]


@dataclass
class Capture:
    """What a ``capture`` context recorded: UNet calls per block and, without a sink, the values themselves."""

    blocks: list[str]
    calls: dict[str, int] = field(default_factory=dict)
    values: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    def stacked(self) -> dict[str, torch.Tensor]:
        """``{block: [steps, batch, H, W, C]}`` of the kept values."""
        return {block: torch.stack(self.values[block]) for block in self.blocks if self.values.get(block)}


def check_site(site: str) -> None:
    if site not in SITES:
        raise SAEError(f"site is {site!r}; allowed: {', '.join(SITES)}")


@contextmanager
def capture(pipe, blocks: list[str], site: str = "delta", steps: Collection[int] | None = None,
            sink: Sink | None = None, cond_only: bool = True) -> Iterator[Capture]:
    """Hook ``blocks`` of ``pipe.unet`` (see the module docstring); yields the ``Capture`` being filled."""
    check_site(site)
    if not blocks:
        raise SAEError("blocks is empty; name at least one UNet transformer block")
    modules = {name: get_block(pipe.unet, name) for name in blocks}
    record = Capture(list(blocks), {name: 0 for name in blocks}, {name: [] for name in blocks})
    wanted = None if steps is None else set(steps)

    def make_hook(name: str):
        def hook(module, args, kwargs, output):
            step = record.calls[name]
            record.calls[name] += 1
            if wanted is not None and step not in wanted:
                return None
            value = site_value(site, block_input(args, kwargs), block_output(output)).detach()
            if cond_only and getattr(pipe, "do_classifier_free_guidance", False):
                value = value[value.shape[0] // 2:]
            value = value.permute(0, 2, 3, 1)
            if sink is not None:
                sink(name, step, value)
            else:
                record.values[name].append(value.float().cpu())
            return None
        return hook

    with forward_hooks({module: make_hook(name) for name, module in modules.items()}):
        yield record


def capture_activations(pipe, blocks: list[str], site: str = "delta", steps: Collection[int] | None = None,
                        cond_only: bool = True, **pipeline_kwargs) -> dict[str, torch.Tensor]:
    """Run ``pipe(**pipeline_kwargs)`` once; ``{block: float32 CPU tensor [steps, batch, H, W, C]}``."""
    with capture(pipe, blocks, site, steps=steps, cond_only=cond_only) as record, torch.no_grad():
        pipe(**pipeline_kwargs)
    return record.stacked()


def stop_after_step(last_step: int):
    """A ``callback_on_step_end`` that interrupts the pipeline once step ``last_step`` ran (later steps unused)."""
    def callback(pipe, step: int, timestep, callback_kwargs: dict) -> dict:
        if step >= last_step:
            pipe._interrupt = True
        return callback_kwargs
    return callback


# ----------------------------------------------------------------------------------------------------------------
# `sae collect`: run a pipeline over prompts and stream the chosen site of each block into shards.


@dataclass
class CollectOptions:
    model: str
    blocks: list[str]
    prompts_file: str
    out: str
    site: str = "delta"
    steps: int | None = None
    step_indices: list[int] | None = None
    batch_size: int = 8
    limit: int | None = None
    seed: int = 0
    guidance: float | None = None
    height: int | None = None
    width: int | None = None
    device: str = "auto"
    dtype: str | None = None
    overwrite: bool = False
    progress: bool = True
    # the model's generation defaults (width, height, steps, guidance), used where steps etc. are not given: the
    # CLI passes those of the model's ``sae.models`` entry point (``sae.pipelines.model_defaults``)
    defaults: dict | None = None


def multi_cpu() -> bool:
    """Several processes (accelerate launch / torchrun) and no GPU: accelerate must be told to use gloo on CPUs."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def read_prompts(file: str | Path, limit: int | None = None) -> list[str]:
    """One prompt per line; blank lines and lines starting with '#' are skipped."""
    path = Path(file)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (FileNotFoundError, IsADirectoryError):
        raise SAEError(f"prompts file '{file}' does not exist") from None
    prompts = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not prompts:
        raise SAEError(f"prompts file '{file}' is empty; it needs one prompt per line")
    if limit is not None:
        if limit < 1:
            raise SAEError(f"limit is {limit}; it must be >= 1")
        prompts = prompts[:limit]
    return prompts


def collect(options: CollectOptions, pipe=None) -> dict[str, Manifest]:
    """Collect activations (see ``sae collect --help``); returns each block's final manifest.

    ``pipe``: an already loaded pipeline for ``options.model`` (else it is loaded here).

    Prompt batch i becomes shard i of every block, so finished shards are skipped on a re-run. Under
    ``accelerate launch`` the unfinished batches are split across processes; a plain process does them all.
    """
    from accelerate import PartialState

    check_site(options.site)
    if options.batch_size < 1:
        raise SAEError(f"batch-size is {options.batch_size}; it must be >= 1")
    prompts = read_prompts(options.prompts_file, options.limit)
    state = PartialState(cpu=multi_cpu())
    device = options.device
    if options.device == "auto" and state.num_processes > 1:
        device = "cpu" if state.device.type == "cpu" else str(state.device)
    pipe = pipe or load_diffusers_pipeline(options.model, device=device, dtype=options.dtype)
    folders, manifests = _prepare_folders(pipe, options, prompts, state)
    batches = [list(range(i, min(i + options.batch_size, len(prompts))))
               for i in range(0, len(prompts), options.batch_size)]
    todo = [n for n in range(len(batches)) if not all(_shard_done(folders[b], n, manifests[b]) for b in folders)]
    state.wait_for_everyone()
    with state.split_between_processes(todo) as mine:
        bar = tqdm(mine, desc="collect", unit="batch", disable=not (options.progress and state.is_main_process))
        for number in bar:
            _collect_batch(pipe, options, manifests, folders, number, batches[number], prompts)
    state.wait_for_everyone()
    if state.is_main_process:
        for block, folder in folders.items():
            manifests[block].counts = _count(folder, manifests[block], len(batches))
            write_manifest(folder, manifests[block])
    state.wait_for_everyone()
    return {block: read_manifest(folder) for block, folder in folders.items()}


def generation_settings(pipe, steps: int | None = None, guidance: float | None = None, height: int | None = None,
                        width: int | None = None, defaults: dict | None = None) -> tuple[int, int, int, float | None]:
    """(height, width, steps, guidance) of a run: what was asked, else ``defaults`` (the model's own, e.g. from its
    ``sae.models`` entry point: ``sae.pipelines.model_defaults``), else the UNet's sample size, 4 steps and the
    pipeline's own guidance (None)."""
    defaults = defaults or {}
    vae_scale = getattr(pipe, "vae_scale_factor", 8)
    height = height or defaults.get("height") or pipe.unet.config.sample_size * vae_scale
    width = width or defaults.get("width") or pipe.unet.config.sample_size * vae_scale
    steps = steps or defaults.get("steps") or 4
    guidance = guidance if guidance is not None else defaults.get("guidance")
    if steps < 1:
        raise SAEError(f"steps is {steps}; it must be >= 1")
    return height, width, steps, guidance


def _prepare_folders(pipe, options: CollectOptions, prompts: list[str], state) -> tuple[dict, dict]:
    height, width, steps, guidance = generation_settings(pipe, options.steps, options.guidance, options.height,
                                                         options.width, options.defaults)
    vae_scale = getattr(pipe, "vae_scale_factor", 8)
    for index in options.step_indices or []:
        if not 0 <= index < steps:
            raise SAEError(f"step-index is {index}; allowed: 0..{steps - 1} (with --steps {steps})")
    infos = {info.name: info for info in unet_blocks(pipe.unet, height, width, vae_scale)}
    root = Path(options.out)
    folders, manifests = {}, {}
    for block in dict.fromkeys(options.blocks):
        get_block(pipe.unet, block)
        info = infos[block]
        folders[block] = root / block if len(set(options.blocks)) > 1 else root
        manifests[block] = Manifest(
            model=options.model, block=block, site=options.site, d_in=info.channels, grid=list(info.grid),
            height=height, width=width, num_inference_steps=steps,
            step_indices=sorted(set(options.step_indices)) if options.step_indices else None,
            guidance_scale=guidance, seed=options.seed, batch_size=options.batch_size, n_prompts=len(prompts))
    if state.is_main_process:
        for block, folder in folders.items():
            _claim_folder(folder, manifests[block], prompts, options.overwrite)
    state.wait_for_everyone()
    return folders, manifests


def _claim_folder(folder: Path, manifest: Manifest, prompts: list[str], overwrite: bool) -> None:
    """Create the shard folder, or check that the one there holds the same run (else refuse or clear it).

    Without ``overwrite`` a folder of the same run is resumed. ``overwrite`` always starts over: the run key names
    the model, not its weights, so a retrained model under the same name must not reuse old shards."""
    if overwrite:
        for file in list_shards(folder) if folder.exists() else []:
            file.unlink()
    elif (folder / MANIFEST_NAME).exists():
        old = read_manifest(folder)
        same_prompts = (folder / PROMPTS_NAME).exists() and json.loads((folder / PROMPTS_NAME).read_text()) == prompts
        if old.run_key() != manifest.run_key() or not same_prompts:
            changed = [k for k, v in manifest.run_key().items() if old.run_key().get(k) != v]
            raise SAEError(f"out folder '{folder}' holds a different collection (differs in: "
                           f"{', '.join(changed or ['prompts'])}); use --overwrite to replace it or another --out")
    elif folder.exists() and any(folder.iterdir()) and list_shards(folder):
        raise SAEError(f"out folder '{folder}' holds shards without a manifest; use --overwrite or another --out")
    folder.mkdir(parents=True, exist_ok=True)
    write_manifest(folder, manifest)
    write_json(folder / PROMPTS_NAME, prompts)


def _shard_done(folder: Path, number: int, manifest: Manifest) -> bool:
    file = folder / shard_name(number)
    return file.exists() and shard_length(file, manifest.d_in) > 0


def _collect_batch(pipe, options: CollectOptions, manifests: dict, folders: dict, number: int,
                   prompt_ids: list[int], prompts: list[str]) -> None:
    manifest = next(iter(manifests.values()))
    kept: dict[str, list[tuple[int, torch.Tensor]]] = {block: [] for block in folders}

    def sink(block: str, step: int, value: torch.Tensor) -> None:
        kept[block].append((step, value.to("cpu", torch.float16)))

    kwargs = {"prompt": [prompts[i] for i in prompt_ids], "num_inference_steps": manifest.num_inference_steps,
              "height": manifest.height, "width": manifest.width, "output_type": "latent",
              "generator": [torch.Generator().manual_seed(options.seed + i) for i in prompt_ids]}
    if manifest.guidance_scale is not None:
        kwargs["guidance_scale"] = manifest.guidance_scale
    if manifest.step_indices:
        kwargs["callback_on_step_end"] = stop_after_step(max(manifest.step_indices))
    with capture(pipe, list(folders), options.site, steps=manifest.step_indices, sink=sink), torch.no_grad():
        pipe(**kwargs)
    for block, folder in folders.items():
        acts, index = _flatten(kept[block], prompt_ids)
        if not torch.isfinite(acts).all():
            raise SAEError(f"activations of block {block} for prompts {prompt_ids[0]}..{prompt_ids[-1]} contain "
                           "NaN or inf (try --dtype float32)")
        write_shard(folder / shard_name(number), acts, index)


def _flatten(values: list[tuple[int, torch.Tensor]], prompt_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, C] vectors and their (prompt id, step, row, col), step-major then prompt, row, col."""
    acts, index = [], []
    for step, value in values:
        batch, rows, cols, channels = value.shape
        pid, row, col = torch.meshgrid(torch.tensor(prompt_ids[:batch]), torch.arange(rows), torch.arange(cols),
                                       indexing="ij")
        acts.append(value.reshape(-1, channels))
        index.append(torch.stack([pid.flatten(), torch.full((pid.numel(),), step), row.flatten(), col.flatten()], 1))
    return torch.cat(acts), torch.cat(index).to(torch.int32)


def _count(folder: Path, manifest: Manifest, n_batches: int) -> dict[str, int]:
    shards = list_shards(folder)
    return {"shards": len(shards), "expected_shards": n_batches,
            "vectors": sum(shard_length(file, manifest.d_in) for file in shards),
            "complete": int(all((folder / shard_name(n)).exists() for n in range(n_batches)))}
