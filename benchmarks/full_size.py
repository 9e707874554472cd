"""Full size: plain, steered and repainted generation on the SDXL-Turbo architecture, random weights, measured
through the engine.

Builds SDXL-Turbo's UNet, VAE and both text encoders from their published configs (written below as plain data)
with random weights, so nothing is downloaded; the tokenizers are small word-level stand-ins built here (a prompt
tokenizes in microseconds either way, and the text encoders still see 77 positions). The scheduler is
EulerAncestralDiscreteScheduler with Turbo's config. Random SAEs (d_in 1280, 5120 features, k=10, as SAEPaint's)
sit on 2 of the 4 SAEPaint blocks. Measured in one run, interleaved so drifts of the machine hit every side:

- plain generation (no layers, every step computed);
- steered generation: 4 layers (add, set, erase, a mix) with soft masks on 2 blocks;
- a repaint as the page does it: a stroke's mask arrives in ``PaintApp.canvas_edit`` (the page's handler), the
  image leaves as the PNG Gradio writes for the browser; split into UNet, VAE decode, latents to picture, PNG and
  the rest (plan, hooks, scheduler, keeping the rest of the image);
- the text encoders' time on a new prompt (a repaint of the same prompt uses cached embeddings);
- steered / plain with 1, 4 and 16 layers on one block (``--layer-counts``);
- peak memory: RSS on a CPU, ``torch.cuda.max_memory_allocated`` on a GPU.

    python benchmarks/full_size.py [--device cpu] [--dtype fp32] [--vae full|tiny] [--repeats 3]
                                   [--layer-counts 1,4,16] [--json OUT]
    python benchmarks/full_size.py --device cuda --dtype fp16 --repeats 20   # absolute times, the GPU named

``--vae tiny`` decodes with AutoencoderTiny in TAESDXL's config (the live-preview path); the TAESDXL decode of
the same latents is timed in every run anyway. ``--scale tiny`` runs the same code on a scaled-down copy of the
configs (the test uses it); its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from anywhere: the repository's packages, not installed ones
    sys.path.insert(0, str(REPO))

MODEL = "stabilityai/sdxl-turbo"
SAE_BLOCKS = ("down_blocks.2.attentions.1", "up_blocks.0.attentions.0")  # 2 of SAEPaint's 4
STACKED_BLOCK = SAE_BLOCKS[0]  # where 1, 4 and 16 layers are stacked
PROMPT = "a red circle on grass"

# The published configs of stabilityai/sdxl-turbo (unet/, vae/, text_encoder/, text_encoder_2/, scheduler/
# config.json), as plain data.
UNET_CONFIG = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "center_input_sample": False, "flip_sin_to_cos": True,
    "freq_shift": 0, "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "only_cross_attention": False,
    "block_out_channels": [320, 640, 1280], "layers_per_block": 2, "downsample_padding": 1,
    "mid_block_scale_factor": 1, "act_fn": "silu", "norm_num_groups": 32, "norm_eps": 1e-5,
    "cross_attention_dim": 2048, "transformer_layers_per_block": [1, 2, 10], "attention_head_dim": [5, 10, 20],
    "use_linear_projection": True, "upcast_attention": None, "resnet_time_scale_shift": "default",
    "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816, "time_embedding_type": "positional", "conv_in_kernel": 3,
    "conv_out_kernel": 3,
}
VAE_CONFIG = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 2, "act_fn": "silu", "norm_num_groups": 32, "sample_size": 512, "scaling_factor": 0.13025,
    "force_upcast": True,
}
TAESDXL_CONFIG = {  # madebyollin/taesdxl
    "in_channels": 3, "out_channels": 3, "encoder_block_out_channels": [64, 64, 64, 64],
    "decoder_block_out_channels": [64, 64, 64, 64], "act_fn": "relu", "latent_channels": 4,
    "upsampling_scaling_factor": 2, "num_encoder_blocks": [1, 3, 3, 3], "num_decoder_blocks": [3, 3, 3, 1],
    "latent_magnitude": 3, "latent_shift": 0.5, "force_upcast": False, "scaling_factor": 1.0,
}
TEXT_ENCODER_CONFIG = {  # CLIP ViT-L/14's text tower
    "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "projection_dim": 768,
    "num_hidden_layers": 12, "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
TEXT_ENCODER_2_CONFIG = {  # OpenCLIP ViT-bigG/14's text tower, with its projection
    "vocab_size": 49408, "hidden_size": 1280, "intermediate_size": 5120, "projection_dim": 1280,
    "num_hidden_layers": 32, "num_attention_heads": 20, "max_position_embeddings": 77, "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
}
SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon", "timestep_spacing": "trailing", "steps_offset": 1,
    "interpolation_type": "linear", "use_karras_sigmas": False,
}


@dataclass(frozen=True)
class Scale:
    """The configs to build and the sizes to run them at."""

    unet: dict
    vae: dict
    tiny_vae: dict
    text_encoder: dict
    text_encoder_2: dict
    size: int
    n_features: int
    k: int = 10


FULL = Scale(UNET_CONFIG, VAE_CONFIG, TAESDXL_CONFIG, TEXT_ENCODER_CONFIG, TEXT_ENCODER_2_CONFIG, size=512,
             n_features=5120)
# The same architecture, narrow and shallow: the same blocks (by name), the same code path, in seconds.
TINY = Scale(
    unet={**UNET_CONFIG, "block_out_channels": [32, 64, 64], "transformer_layers_per_block": [1, 1, 2],
          "attention_head_dim": [2, 4, 4], "norm_num_groups": 8, "cross_attention_dim": 64,
          "addition_time_embed_dim": 8, "projection_class_embeddings_input_dim": 32 + 6 * 8, "sample_size": 8},
    vae={**VAE_CONFIG, "block_out_channels": [8, 16, 16, 16], "layers_per_block": 1, "norm_num_groups": 8,
         "sample_size": 64},
    tiny_vae={**TAESDXL_CONFIG, "encoder_block_out_channels": [8] * 4, "decoder_block_out_channels": [8] * 4},
    text_encoder={**TEXT_ENCODER_CONFIG, "hidden_size": 32, "intermediate_size": 37, "projection_dim": 32,
                  "num_hidden_layers": 2, "num_attention_heads": 4},
    text_encoder_2={**TEXT_ENCODER_2_CONFIG, "hidden_size": 32, "intermediate_size": 37, "projection_dim": 32,
                    "num_hidden_layers": 2, "num_attention_heads": 4},
    size=64, n_features=256)
SCALES = {"full": FULL, "tiny": TINY}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


# ----------------------------------------------------------------------------------------------------------------
# Building


@dataclass
class Built:
    pipeline: object
    tiny_vae: torch.nn.Module
    seconds: dict[str, float]  # per component, construction with random weights
    parameters: dict[str, int]


def build_pipeline(scale: Scale, device: torch.device, dtype: torch.dtype, vae: str = "full") -> Built:
    """SDXL-Turbo's pipeline from ``scale``'s configs with random weights, made on ``device`` and cast to ``dtype``
    (weights are initialised where they will live: on a GPU that takes seconds)."""
    from diffusers import (
        AutoencoderKL,
        AutoencoderTiny,
        EulerAncestralDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from sae.pipelines import TINY_WORDS
    from sae.tokenizer import make_word_tokenizer

    tokenizer = make_word_tokenizer(TINY_WORDS)  # a stand-in: the published tokenizers are files to download
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    makers = {
        "unet": lambda: UNet2DConditionModel(**scale.unet),
        "vae": lambda: AutoencoderKL(**scale.vae),
        "tiny_vae": lambda: AutoencoderTiny(**scale.tiny_vae),
        "text_encoder": lambda: CLIPTextModel(CLIPTextConfig(**scale.text_encoder, **special)),
        "text_encoder_2": lambda: CLIPTextModelWithProjection(CLIPTextConfig(**scale.text_encoder_2, **special)),
    }
    parts, seconds = {}, {}
    torch.manual_seed(0)
    for name, make in makers.items():
        start = time.perf_counter()
        with torch.device(device), torch.no_grad():
            module = make().eval().requires_grad_(False)
        parts[name] = module if module.dtype == dtype else module.to(dtype=dtype)
        synchronize(device)
        seconds[name] = time.perf_counter() - start
    scheduler = EulerAncestralDiscreteScheduler.from_config(SCHEDULER_CONFIG)  # ignores keys it does not take, as
    # from_pretrained does
    pipe = StableDiffusionXLPipeline(
        vae=parts["tiny_vae"] if vae == "tiny" else parts["vae"], text_encoder=parts["text_encoder"],
        text_encoder_2=parts["text_encoder_2"], tokenizer=tokenizer, tokenizer_2=tokenizer, unet=parts["unet"],
        scheduler=scheduler, force_zeros_for_empty_prompt=True, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    counts = {name: sum(p.numel() for p in module.parameters()) for name, module in parts.items()}
    return Built(pipe, parts["tiny_vae"], seconds, counts)


def build_engine(built: Built, scale: Scale, device: torch.device, folder: Path):
    """The engine over the built pipeline, with random SAEs on ``SAE_BLOCKS`` (labelled, so the page opens with a
    layer to paint with)."""
    from paint_app.concepts import ConceptLibrary
    from paint_app.engine import Engine
    from paint_app.models import PROFILES, BlockProfile, LoadedModel
    from sae.pipelines import unet_blocks

    pipe = built.pipeline
    known = PROFILES[MODEL]
    found = {b.name: b for b in unet_blocks(pipe.unet, scale.size, scale.size)}
    blocks = tuple(BlockProfile(b.name, found[b.name].channels, found[b.name].grid, b.role) for b in known.blocks)
    profile = replace(known, width=scale.size, height=scale.size, blocks=blocks)  # at full size: PROFILES' own
    paths = [random_sae(folder / block, block, profile.block(block).channels, scale.n_features, scale.k, seed)
             for seed, block in enumerate(SAE_BLOCKS)]
    model = LoadedModel(MODEL, pipe, profile, pipe.unet.device, pipe.unet.dtype)
    return Engine(model, ConceptLibrary.load(paths, profile, device=device))


def random_sae(folder: Path, block: str, channels: int, n_features: int, k: int, seed: int) -> str:
    from sae.labels import Label, save_labels
    from sae.model import SAE, SAEConfig

    generator = torch.Generator().manual_seed(seed)
    sae = SAE(SAEConfig(d_in=channels, n_features=n_features, k=k, block=block, model=MODEL))
    sae.reset_parameters(generator)
    sae.set_feature_statistics(0.5 + torch.rand(n_features, generator=generator),
                               0.1 * torch.rand(n_features, generator=generator) + 1e-3)
    sae.save_pretrained(folder)
    save_labels(folder, {0: Label("red thing", 1.0, "user"), 1: Label("blue thing", 0.9, "user")})
    return str(folder)


# ----------------------------------------------------------------------------------------------------------------
# What is painted


def soft_mask(size: int, cx: float, cy: float, radius: float) -> np.ndarray:
    """A round soft brush mark: 1 at the centre falling linearly to 0 at ``radius`` (fractions of the side)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    return np.clip(1.0 - np.hypot(x - cx, y - cy) / radius, 0.0, 1.0).astype(np.float32)


LAYER_RECIPES = (  # (mode, concept keywords, strength): one of each kind of edit that acts in the SAE's directions
    ("add", {"feature": 3}, 4.0),
    ("set", {"feature": 5}, 2.0),
    ("erase", {"feature": 7}, 1.0),
    ("add", {"mix": ((1, 1.0), (2, 0.5))}, 3.0),
)


def layers_on(blocks: list[str], size: int):
    """One layer per entry of ``blocks``, cycling through ``LAYER_RECIPES`` with soft masks in different places."""
    from paint_app.painting import Concept, Layer

    layers = []
    for i, block in enumerate(blocks):
        mode, concept, strength = LAYER_RECIPES[i % len(LAYER_RECIPES)]
        concept = {"feature": concept["feature"] + 8 * (i // 4)} if "feature" in concept else concept
        angle = 2.4 * i
        mask = soft_mask(size, 0.5 + 0.25 * np.cos(angle), 0.5 + 0.25 * np.sin(angle), 0.3)
        layers.append(Layer(Concept(block, **concept), mask, name=f"layer {i}", mode=mode, strength=strength))
    return layers


def plain_painting(model: str, size: int, steps: int = 1, guidance: float = 0.0):
    from paint_app.painting import Painting

    return Painting(model=model, prompt=PROMPT, seed=0, width=size, height=size, steps=steps, guidance=guidance)


def stacked_painting(model: str, block: str, count: int, size: int, steps: int = 1, guidance: float = 0.0):
    """``count`` layers on one block (add, set, erase and mix in turn), soft masks."""
    return replace(plain_painting(model, size, steps, guidance), layers=layers_on([block] * count, size))


def steered_painting(model: str, blocks: tuple[str, str], size: int, steps: int = 1, guidance: float = 0.0):
    """4 layers on 2 blocks (add and set on the first, erase and a mix on the second), soft masks."""
    return replace(plain_painting(model, size, steps, guidance),
                   layers=layers_on([blocks[0], blocks[0], blocks[1], blocks[1]], size))


# ----------------------------------------------------------------------------------------------------------------
# Measuring


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Split:
    """Seconds spent per part of one generation."""

    unet: float = 0.0
    vae: float = 0.0
    to_picture: float = 0.0  # the decoded tensor -> PIL (the pipeline's image processor)


@dataclass
class Stopwatch:
    """Times the UNet calls (torch forward hooks, so the edit hooks inside count), the VAE decode and the
    conversion to a picture of every generation while attached."""

    device: torch.device
    splits: list[Split] = field(default_factory=list)
    _started: float = 0.0

    def begin(self) -> Split:
        self.splits.append(Split())
        return self.splits[-1]

    def _timed(self, part: str, function):
        def run(*args, **kwargs):
            synchronize(self.device)
            start = time.perf_counter()
            result = function(*args, **kwargs)
            synchronize(self.device)
            if self.splits:
                setattr(self.splits[-1], part, getattr(self.splits[-1], part) + time.perf_counter() - start)
            return result

        return run

    @contextmanager
    def attached(self, pipe) -> Iterator[Stopwatch]:
        def before(module, args):
            synchronize(self.device)
            self._started = time.perf_counter()

        def after(module, args, output):
            synchronize(self.device)
            if self.splits:
                self.splits[-1].unet += time.perf_counter() - self._started

        handles = [pipe.unet.register_forward_pre_hook(before), pipe.unet.register_forward_hook(after)]
        pipe.vae.decode = self._timed("vae", pipe.vae.decode)
        pipe.image_processor.postprocess = self._timed("to_picture", pipe.image_processor.postprocess)
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()
            del pipe.vae.decode, pipe.image_processor.postprocess


@dataclass
class Page:
    """The page's handlers on the engine, one tab started (its plain image made, a first layer to paint with)."""

    app: object
    state: object
    png: object  # the output component: the PNG Gradio writes for the browser
    strokes: int = 0

    @classmethod
    def open(cls, engine, workdir: Path) -> Page:
        import gradio as gr

        from paint_app.ui import PaintApp

        app = PaintApp(engine, workdir)
        state = app.new_state()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            app.start(state)
        if state.active_layer() is None:
            raise RuntimeError("the page opened with no layer to paint with: the SAEs have no labelled feature")
        return cls(app, state, gr.Image(type="pil", format="png"))

    def stroke(self) -> dict:
        """The canvas's edit after one more soft stroke (a horizontal band, lower each time) on the active layer."""
        from paint_app import web_canvas

        value = self.app.editor(self.state)
        scale, width, height = value["scale"], value["width"], value["height"]
        mask = np.rint(self.state.active_layer().mask * 255).astype(np.uint8)
        mask = np.repeat(np.repeat(mask, scale, axis=0), scale, axis=1)
        row = (self.strokes * height // 16) % height
        band = slice(row * scale, (row + max(1, height // 16)) * scale)
        mask[band, (width // 8) * scale:(7 * width // 8) * scale] = 200  # a soft brush: opacity 200 of 255
        self.strokes += 1
        return {"kind": "stroke", "layer": value["layer"], "width": width, "height": height,
                "offset": value["offset"], "mask": web_canvas.encode_mask(mask)}

    def repaint(self) -> tuple[float, float]:
        """One stroke from its arrival at the server to the PNG leaving it: (total seconds, PNG seconds)."""
        edit = self.stroke()
        start = time.perf_counter()
        result = self.app.canvas_edit(self.state, edit, True)
        if "output" not in result:
            raise RuntimeError(f"the stroke did not repaint: {result.get('status', result)!r}")
        png_start = time.perf_counter()
        self.png.postprocess(result["output"])
        end = time.perf_counter()
        return end - start, end - png_start


def median_split(splits: list[Split]) -> dict[str, float]:
    return {part: statistics.median(getattr(s, part) for s in splits) for part in ("unet", "vae", "to_picture")}


def timed_generation(engine, painting, stopwatch: Stopwatch) -> tuple[float, Split]:
    """Seconds for one generation with every step computed (``replay=False``), and its split."""
    split = stopwatch.begin()
    synchronize(engine.model.device)
    start = time.perf_counter()
    engine.generate(painting, replay=False)
    synchronize(engine.model.device)
    return time.perf_counter() - start, split


def measure(engine, scale: Scale, repeats: int, layer_counts: list[int], workdir: Path, tiny_vae,
            log=print, warmup: bool = True) -> dict:
    """Everything, interleaved: plain, steered and page repaints; then plain against 1, 4, 16 stacked layers."""
    device = engine.model.device
    pipe = engine.pipeline
    plain = plain_painting(MODEL, scale.size)
    steered = steered_painting(MODEL, SAE_BLOCKS, scale.size)
    figures: dict = {}

    engine._prompt_cache.clear()
    synchronize(device)
    start = time.perf_counter()
    embeds, _ = engine.prompt_embeddings(PROMPT, "", False)
    synchronize(device)
    figures["text_encoding_s"] = time.perf_counter() - start
    start = time.perf_counter()
    engine.prompt_embeddings(PROMPT, "", False)
    figures["text_encoding_cached_s"] = time.perf_counter() - start

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    stopwatch = Stopwatch(device)
    with stopwatch.attached(pipe):
        page = Page.open(engine, workdir)  # its first image is a plain run: the warm-up of the plain path
        if warmup:  # first-call overheads: seconds at most, so a slow CPU run may skip them (--no-warmup)
            log("page opened; warming up")
            timed_generation(engine, steered, stopwatch)
            page.repaint()
        times: dict[str, list[float]] = {"plain": [], "steered": [], "repaint": [], "png": []}
        splits: dict[str, list[Split]] = {"plain": [], "steered": [], "repaint": []}
        for i in range(repeats):
            for name, painting in (("plain", plain), ("steered", steered)):
                seconds, split = timed_generation(engine, painting, stopwatch)
                times[name].append(seconds)
                splits[name].append(split)
            split = stopwatch.begin()
            total, png = page.repaint()
            times["repaint"].append(total)
            times["png"].append(png)
            splits["repaint"].append(split)
            log(f"repeat {i + 1}/{repeats}: plain {times['plain'][-1]:.3f} s, steered {times['steered'][-1]:.3f} s, "
                f"repaint {total:.3f} s")
        tiny_decode = time_tiny_decode(tiny_vae, scale, device, repeats)
        log("medians: " + ", ".join(f"{name} {statistics.median(values):.3f} s" for name, values in times.items()) +
            f"; TAESDXL decode {tiny_decode:.3f} s; repaint UNet {median_split(splits['repaint'])['unet']:.3f} s, "
            f"VAE {median_split(splits['repaint'])['vae']:.3f} s")

        stacked: dict[int, dict] = {}
        if layer_counts:
            paintings = {n: stacked_painting(MODEL, STACKED_BLOCK, n, scale.size) for n in layer_counts}
            runs = {n: ([], []) for n in [0, *layer_counts]}  # no warm-up: hooks and their caches are made anew
            # for every generation, and the UNet is warm
            for i in range(repeats):
                for n in [0, *layer_counts]:
                    seconds, split = timed_generation(engine, paintings.get(n, plain), stopwatch)
                    runs[n][0].append(seconds)
                    runs[n][1].append(split.unet)
                log(f"stacked layers, repeat {i + 1}/{repeats}: " +
                    ", ".join(f"{n}: {runs[n][0][-1]:.3f} s" for n in runs))
            base, base_unet = (statistics.median(v) for v in runs[0])
            for n in layer_counts:
                gen, unet = (statistics.median(v) for v in runs[n])
                stacked[n] = {"generation_s": gen, "ratio": gen / base, "unet_s": unet, "unet_ratio": unet / base_unet}
            figures["stacked_plain_s"], figures["stacked_plain_unet_s"] = base, base_unet

    medians = {name: statistics.median(values) for name, values in times.items()}
    figures.update(
        plain_s=medians["plain"], steered_s=medians["steered"], repaint_s=medians["repaint"],
        steered_ratio=medians["steered"] / medians["plain"], repaint_ratio=medians["repaint"] / medians["plain"],
        splits={name: median_split(values) for name, values in splits.items()},
        png_s=medians["png"], tiny_vae_decode_s=tiny_decode, stacked=stacked, raw=times,
        fastest={name: min(values) for name, values in times.items()})  # on a busy machine, the least disturbed
    rest = medians["repaint"] - medians["png"] - sum(figures["splits"]["repaint"].values())
    figures["splits"]["repaint"].update(png=medians["png"], rest=rest)
    figures["memory"] = memory(device)
    figures["load_average_1_5_15_min"] = os.getloadavg()  # other work on the machine while this ran
    return figures


@torch.no_grad()
def time_tiny_decode(tiny_vae, scale: Scale, device: torch.device, repeats: int) -> float:
    """Median seconds of a TAESDXL decode of one latent of the run's size (the live-preview decoder)."""
    latent = torch.randn(1, 4, scale.size // 8, scale.size // 8, device=device, dtype=tiny_vae.dtype)
    tiny_vae.decode(latent)
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        tiny_vae.decode(latent)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def memory(device: torch.device) -> dict:
    """Peak resident memory of this process (and the GPU's peak allocation since the measuring began)."""
    figures = {"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}  # KiB on Linux
    if device.type == "cuda":
        figures["cuda_peak_allocated_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        figures["cuda_allocated_gib"] = torch.cuda.memory_allocated(device) / 2**30
    return figures


def available_gib() -> float:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


# ----------------------------------------------------------------------------------------------------------------
# The report


def report(figures: dict, built: Built, args, device: torch.device) -> str:
    ms = 1000.0
    lines = [
        f"SDXL-Turbo architecture, random weights ({args.scale} scale), {args.size}x{args.size}, 1 step, "
        f"guidance 0, {args.dtype}, VAE {args.vae}; device {device} ({device_name(device)}); "
        f"{args.repeats} interleaved repeats, medians",
        "parameters: " + ", ".join(f"{name} {count / 1e6:.1f} M" for name, count in built.parameters.items()),
        f"built with random weights in {sum(built.seconds.values()):.1f} s (" +
        ", ".join(f"{name} {s:.1f} s" for name, s in built.seconds.items()) + ")",
        f"text encoding of a new prompt  {figures['text_encoding_s'] * ms:9.1f} ms   (cached: "
        f"{figures['text_encoding_cached_s'] * ms:.3f} ms)",
        f"plain generation               {figures['plain_s'] * ms:9.1f} ms",
        f"steered, 4 layers on 2 blocks  {figures['steered_s'] * ms:9.1f} ms   ratio {figures['steered_ratio']:6.3f}"
        "   (target on a GPU <= 1.03)",
        f"repaint as the page does it    {figures['repaint_s'] * ms:9.1f} ms   ratio {figures['repaint_ratio']:6.3f}"
        "   (target on one H100 <= 150 ms)",
    ]
    fastest = figures["fastest"]
    lines.append(f"fastest of each: plain {fastest['plain'] * ms:.1f} ms, steered {fastest['steered'] * ms:.1f} ms "
                 f"(ratio {fastest['steered'] / fastest['plain']:.3f}), repaint {fastest['repaint'] * ms:.1f} ms "
                 f"(ratio {fastest['repaint'] / fastest['plain']:.3f})")
    split = figures["splits"]["repaint"]
    total = figures["repaint_s"]
    parts = (("UNet", "unet"), ("VAE decode", "vae"), ("latents to picture", "to_picture"),
             ("PNG for the browser", "png"), ("rest: plan, hooks, scheduler, keep the rest", "rest"))
    lines.append("repaint split: " + ", ".join(f"{label} {split[key] * ms:.1f} ms ({100 * split[key] / total:.0f}%)"
                                              for label, key in parts))
    vae = figures["splits"]["plain"]["vae"]
    lines.append(f"VAE decode in a plain generation {vae * ms:.1f} ms; TAESDXL decode of the same latent "
                 f"{figures['tiny_vae_decode_s'] * ms:.1f} ms")
    for n, row in figures["stacked"].items():
        lines.append(f"{n:2d} layers on {STACKED_BLOCK}: {row['generation_s'] * ms:9.1f} ms   ratio {row['ratio']:6.3f}"
                     f"   UNet alone {row['unet_s'] * ms:.1f} ms, ratio {row['unet_ratio']:6.3f}")
    mem = figures["memory"]
    lines.append(f"peak RSS {mem['peak_rss_gib']:.2f} GiB" + (
        f"; GPU peak allocated {mem['cuda_peak_allocated_gib']:.2f} GiB, allocated after "
        f"{mem['cuda_allocated_gib']:.2f} GiB" if "cuda_peak_allocated_gib" in mem else ""))
    lines.append("load average at the end (1, 5, 15 min): " +
                 ", ".join(f"{v:.1f}" for v in figures["load_average_1_5_15_min"]))
    return "\n".join(lines)


def parse_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        counts = [0]
    if any(n < 1 for n in counts):
        raise argparse.ArgumentTypeError(f"--layer-counts is {text!r}; allowed: integers >= 1 separated by commas, "
                                         "or '' for none")
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="fp32 on a CPU, fp16 on a GPU by default")
    parser.add_argument("--vae", choices=("full", "tiny"), default="full")
    parser.add_argument("--scale", choices=sorted(SCALES), default="full")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layer-counts", type=parse_counts, default=[1, 4, 16])
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false",
                        help="skip the warm-up generations (for a slow CPU run; on a GPU keep them)")
    parser.add_argument("--min-available-gib", type=float, default=17.0,
                        help="on a CPU at full scale, refuse to start with less memory available")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats is {args.repeats}; allowed: an integer >= 1")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device is {args.device!r} but torch sees no CUDA device")
    args.dtype = args.dtype or ("fp32" if device.type == "cpu" else "fp16")
    scale = SCALES[args.scale]
    args.size = scale.size
    if args.threads:
        torch.set_num_threads(args.threads)
    free = available_gib()
    if device.type == "cpu" and args.scale == "full" and free < args.min_available_gib:
        print(f"only {free:.1f} GiB of memory available; the fp32 run needs about 17 GiB "
              f"(--min-available-gib {args.min_available_gib:g})", file=sys.stderr)
        return 2
    print(f"memory available at start: {free:.1f} GiB; load average {os.getloadavg()[0]:.1f}", flush=True)
    built = build_pipeline(scale, device, DTYPES[args.dtype], args.vae)
    print(f"built in {sum(built.seconds.values()):.1f} s", flush=True)
    with tempfile.TemporaryDirectory(prefix="full-size-") as tmp:
        engine = build_engine(built, scale, device, Path(tmp) / "saes")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="invalid value encountered in cast")  # random weights
            figures = measure(engine, scale, args.repeats, args.layer_counts, Path(tmp) / "page", built.tiny_vae,
                              log=lambda line: print(line, flush=True), warmup=args.warmup)
    text = report(figures, built, args, device)
    print(text)
    if args.json:
        args.json.write_text(json.dumps({
            "settings": {key: value for key, value in vars(args).items() if key != "json"} | {"steps": 1},
            "device": str(device), "device_name": device_name(device), "torch": torch.__version__,
            "memory_available_at_start_gib": free, "build_s": built.seconds, "parameters": built.parameters,
            **figures}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
