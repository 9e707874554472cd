"""generate(painting) -> image, on one loaded pipeline shared by every request; ``load_engine`` makes one.

The one place for locking: a pipeline (its scheduler above all) is not safe to run from two threads at once, and
hooks live on shared modules, so generations run one at a time under ``Engine.lock``. Per-request state lives in
the painting and the plan built from it, never on the engine, so concurrent users never see each other's edits.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import torch
from PIL import Image

from sae.errors import SAEError
from sae.exemplars import BlockRecorder, Example, Recording, pasteable_record, record_example

from .concepts import ConceptLibrary
from .errors import ModelError, PaintError
from .models import LoadedModel, load_model
from .modes import MODES, get_mode
from .painting import Painting
from .session import Session, as_painting
from .steering import Edit, Plan, apply_plan, keep_outside, painted_cover, paste_outside
from .step_cache import StepCache

PROMPT_CACHE_SIZE = 64
UNPAINTED_CACHE_SIZE = 4
EXAMPLE_CACHE_SIZE = 8  # paste examples: outputs of a few blocks over every step, for one feature and settings
SOURCE_CACHE_SIZE = 4  # move sources: the plain run's outputs of a few blocks over every step, per settings and block


@dataclass
class Unpainted:
    """The run of a painting's settings with no layers: its latents after each step, and its image."""

    latents: list[torch.Tensor]
    image: Image.Image


@dataclass
class Generation:
    image: Image.Image
    seconds: float
    prompt_cached: bool


class Engine:
    def __init__(self, model: LoadedModel, concepts: ConceptLibrary | None = None) -> None:
        self.model = model
        self.concepts = concepts or ConceptLibrary()
        self.lock = threading.RLock()
        self._prompt_cache: OrderedDict[tuple, dict[str, torch.Tensor]] = OrderedDict()
        self.step_cache = StepCache()
        self._unpainted: OrderedDict[tuple, Unpainted] = OrderedDict()
        self._examples: OrderedDict[tuple, Example] = OrderedDict()
        self._sources: OrderedDict[tuple, Recording] = OrderedDict()

    @property
    def pipeline(self):
        return self.model.pipeline

    def uses_cfg(self, painting: Painting) -> bool:
        return painting.guidance > 1.0 and self.pipeline.unet.config.time_cond_proj_dim is None

    def plan(self, painting: Painting | Session) -> Plan:
        """The steering plan of a painting: one edit per enabled layer that changes something (its mode says:
        ``EditMode.idle``; e.g. a non-empty mask)."""
        painting = as_painting(painting)
        edits = []
        for i, layer in enumerate(painting.layers):
            where = f"layers[{i}]"
            if not layer.enabled:
                continue
            if layer.copy and not get_mode(layer.mode, f"{where}.mode").copyable:
                raise PaintError(f"{where}.copy is true with mode {layer.mode!r}; allowed: true only with mode "
                                 f"{' or '.join(name for name, mode in MODES.items() if mode.copyable)}")
            features, weights = self.concepts.resolve(layer.concept, where)
            edit = Edit(block=layer.block, features=features, weights=weights,
                        mask=torch.from_numpy(layer.acting_mask()), strength=layer.strength, mode=layer.mode,
                        step_range=layer.step_range, cond_only=layer.cond_only,
                        origin=torch.from_numpy(layer.acting_origin()), offset=tuple(layer.offset), copy=layer.copy)
            if not edit.how.idle(edit):
                edits.append(edit)
        blocks = {edit.block: self.concepts.blocks[edit.block] for edit in edits}
        prototypes = {block: entry.prototypes for block, entry in blocks.items() if entry.prototypes is not None}
        examples = {block: entry.examples for block, entry in blocks.items() if entry.examples}
        return Plan(edits, {block: entry.sae for block, entry in blocks.items()}, prototypes, painting.steps,
                    examples=examples)

    def check_model(self, painting: Painting) -> None:
        if painting.model != self.model.name:
            raise PaintError(f"model is {painting.model!r}; this engine runs {self.model.name!r} "
                             "(render with --model to override the session's model)")

    def generate(self, painting: Painting | Session, replay: bool = True) -> Image.Image:
        return self.generate_timed(painting, replay).image

    def generate_timed(self, painting: Painting | Session, replay: bool = True) -> Generation:
        """Render a painting (a session file's is decoded first).

        1. plan the edits (each layer's concept resolved to features, its mask moved and put on 8-bit levels);
        2. encode the prompt (cached);
        3. make what ``move`` edits need (the plain run recorded at their blocks, cached; edits that move nothing
           on their block's grid are left out);
        4. with nothing painted: the plain run, kept for later repaints;
        5. else make what the other modes need (examples), and with ``keep_outside`` the plain run to keep;
        6. run with the plan's hooks; steps before any edit acts may be replayed from the step cache (same
           pixels) when ``replay`` (callers that hook the UNet's blocks themselves pass ``replay=False``, and
           call ``make_sources`` first, so their hooks do not see the recording runs);
        7. with ``keep_outside``, paste the plain image back outside the painted cover.
        """
        painting = as_painting(painting)
        self.check_model(painting)
        plan = self.plan(painting)
        cfg = self.uses_cfg(painting)
        with self.lock:
            start = time.perf_counter()
            embeds, cached = self.prompt_embeddings(painting.prompt, painting.negative_prompt, cfg)
            settings = painting.key()
            self._make_sources(plan, painting, embeds)
            if not plan.edits:
                plain = self._plain_run(painting, settings, embeds, replay)
                if replay:  # kept for later keep_outside repaints; with replay=False the caller's hooks may be on
                    self._remember_unpainted(settings, plain)
                return Generation(plain.image, time.perf_counter() - start, cached)
            self._make_pastes(plan, painting)
            on_step_end = None
            if painting.keep_outside:
                unpainted = self._unpainted_run(painting, settings, embeds, replay)
                cover = painted_cover(plan, tuple(unpainted.latents[-1].shape[-2:]))
                on_step_end = self._keeping_outside(unpainted.latents, cover)
            generator = torch.Generator(device="cpu").manual_seed(painting.seed)
            replayable = plan.first_step(painting.steps) if replay else 0
            with torch.no_grad(), self.step_cache.replaying(self.pipeline.unet, settings, replayable), \
                    apply_plan(self.pipeline.unet, plan, cfg=cfg):
                image = self._run(painting, embeds, generator, on_step_end).images[0]
            if painting.keep_outside:
                image = paste_outside(image, unpainted.image, cover)
            return Generation(image, time.perf_counter() - start, cached)

    def make_sources(self, painting: Painting | Session) -> None:
        """Record now the plain runs the painting's ``move`` layers need (a caller that hooks the UNet's blocks
        calls this before attaching its hooks)."""
        painting = as_painting(painting)
        self.check_model(painting)
        plan = self.plan(painting)
        with self.lock:
            self._make_sources(plan, painting, self.prompt_embeddings(painting.prompt, painting.negative_prompt,
                                                                      self.uses_cfg(painting))[0])

    def source(self, painting: Painting | Session, block: str) -> Recording:
        """The painting's plain run (its settings, no layers) recorded at ``block`` and every later block of its
        grid or finer, at every step (``sae.exemplars.Recording``): made once per settings and block, then cached.
        Its run is the plain run, kept for ``keep_outside`` too."""
        painting = as_painting(painting)
        self.check_model(painting)
        with self.lock:
            embeds, _ = self.prompt_embeddings(painting.prompt, painting.negative_prompt, self.uses_cfg(painting))
            return self._source(painting, embeds, block)

    def _source(self, painting: Painting, embeds: dict, block: str) -> Recording:
        key = (painting.key(), block)
        if key not in self._sources:
            entry = self.concepts.blocks.get(block)
            if entry is None:
                raise ModelError(f"block is {block!r} but no SAE is loaded for that block; SAEs are loaded for: "
                                 f"{', '.join(sorted(self.concepts.blocks)) or 'no block'}")
            recorder = BlockRecorder(self.pipeline.unet, block, entry.sae.config.site)
            try:
                with recorder.attached():
                    plain = self._plain_run(painting, painting.key(), embeds, replay=False)
                recording = recorder.recording()
            except SAEError as exc:
                raise ModelError(str(exc)) from None
            self._remember_unpainted(painting.key(), plain)
            self._sources[key] = recording
            while len(self._sources) > SOURCE_CACHE_SIZE:
                self._sources.popitem(last=False)
        self._sources.move_to_end(key)
        return self._sources[key]

    def _make_sources(self, plan: Plan, painting: Painting, embeds: dict) -> None:
        """Fill ``plan.pasted`` for the edits whose mode needs the painting's own plain run (``move``), laid out by
        their mode (``from_source``); an edit that writes nothing once its block's grid is known is left out."""
        moving = [i for i, edit in enumerate(plan.edits) if edit.how.uses_source]
        if not moving:
            return
        plan.validate()
        written = {}
        for i in moving:
            edit = plan.edits[i]
            written[i] = edit.how.from_source(self._source(painting, embeds, edit.block), edit, plan.saes[edit.block])
        kept = [i for i in range(len(plan.edits)) if written.get(i, True)]
        plan.edits = [plan.edits[i] for i in kept]
        plan.pasted = {new: written[old] for new, old in enumerate(kept) if old in written}

    def _make_pastes(self, plan: Plan, painting: Painting) -> None:
        """Fill ``plan.pasted``: each edit whose mode needs an example gets it (made once per feature and settings,
        then cached), laid on its mask by its mode (``paste``: moved onto it; ``fill``: averaged over its window)."""
        pastes = [(i, edit) for i, edit in enumerate(plan.edits) if edit.how.needs == "example"]
        if pastes:
            plan.validate()
        for i, edit in pastes:
            feature = plan.paste_feature(edit)
            record = pasteable_record(plan.examples[edit.block][feature])
            key = (edit.block, feature, record["prompt"], record["seed"], painting.steps, painting.guidance,
                   painting.width, painting.height)
            if key not in self._examples:
                try:
                    self._examples[key] = record_example(
                        self.pipeline, plan.saes[edit.block], edit.block, feature, record,
                        num_inference_steps=painting.steps, guidance_scale=painting.guidance, height=painting.height,
                        width=painting.width)
                except SAEError as exc:
                    raise ModelError(f"layers[{i}].mode is {edit.mode!r}: {exc}") from None
                while len(self._examples) > EXAMPLE_CACHE_SIZE:
                    self._examples.popitem(last=False)
            self._examples.move_to_end(key)
            example = self._examples[key]
            plan.pasted[i] = edit.how.from_example(example, edit.mask)

    def _run(self, painting: Painting, embeds: dict, generator: torch.Generator, on_step_end=None):
        extra = {"callback_on_step_end": on_step_end, "callback_on_step_end_tensor_inputs": ["latents"]} \
            if on_step_end else {}
        return self.pipeline(**embeds, num_inference_steps=painting.steps, guidance_scale=painting.guidance,
                             width=painting.width, height=painting.height, generator=generator,
                             output_type="pil", **extra)

    def _plain_run(self, painting: Painting, settings: tuple, embeds: dict, replay: bool) -> Unpainted:
        """The painting's settings with no layers, recording the latents after each step (the run also fills the
        step cache, so a painted run that follows replays the steps before its first edit)."""
        latents: list[torch.Tensor] = []
        generator = torch.Generator(device="cpu").manual_seed(painting.seed)
        with torch.no_grad(), self.step_cache.replaying(self.pipeline.unet, settings,
                                                        painting.steps if replay else 0):
            image = self._run(painting, embeds, generator, self._recording(latents)).images[0]
        return Unpainted(latents, image)

    def _unpainted_run(self, painting: Painting, settings: tuple, embeds: dict, replay: bool) -> Unpainted:
        """The plain run of the painting's settings, from the cache or made now."""
        if settings in self._unpainted:
            self._unpainted.move_to_end(settings)
            return self._unpainted[settings]
        return self._remember_unpainted(settings, self._plain_run(painting, settings, embeds, replay))

    def _remember_unpainted(self, settings: tuple, unpainted: Unpainted) -> Unpainted:
        self._unpainted[settings] = unpainted
        self._unpainted.move_to_end(settings)
        if len(self._unpainted) > UNPAINTED_CACHE_SIZE:
            self._unpainted.popitem(last=False)
        return unpainted

    @staticmethod
    def _recording(latents: list[torch.Tensor]):
        """A step-end callback that keeps a copy of the latents after each step in ``latents``."""

        def record(pipe, index, timestep, tensors):
            latents.append(tensors["latents"].clone())
            return tensors

        return record

    @staticmethod
    def _keeping_outside(unpainted: list[torch.Tensor], cover: torch.Tensor):
        """A step-end callback that keeps the latents outside the painted cover on the unpainted run's."""

        def blend(pipe, index, timestep, tensors):
            tensors["latents"] = keep_outside(tensors["latents"], unpainted[index], cover)
            return tensors

        return blend

    def prompt_embeddings(self, prompt: str, negative_prompt: str, cfg: bool) -> tuple[dict[str, torch.Tensor], bool]:
        """Text embeddings as pipeline keyword arguments, cached per (model, prompt, negative prompt, cfg)."""
        key = (self.model.name, prompt, negative_prompt, cfg)
        with self.lock:
            if key in self._prompt_cache:
                self._prompt_cache.move_to_end(key)
                return self._prompt_cache[key], True
            embeds = self._encode(prompt, negative_prompt or None, cfg)
            self._prompt_cache[key] = embeds
            if len(self._prompt_cache) > PROMPT_CACHE_SIZE:
                self._prompt_cache.popitem(last=False)
            return embeds, False

    @torch.no_grad()
    def _encode(self, prompt: str, negative_prompt: str | None, cfg: bool) -> dict[str, torch.Tensor]:
        pipe = self.pipeline
        device = pipe.unet.device
        if self.model.profile.family == "sdxl" or getattr(pipe, "text_encoder_2", None) is not None:
            pe, npe, pooled, npooled = pipe.encode_prompt(prompt, device=device, num_images_per_prompt=1,
                                                          do_classifier_free_guidance=cfg,
                                                          negative_prompt=negative_prompt)
            embeds = {"prompt_embeds": pe, "pooled_prompt_embeds": pooled}
            if cfg:
                embeds.update(negative_prompt_embeds=npe, negative_pooled_prompt_embeds=npooled)
            return embeds
        pe, npe = pipe.encode_prompt(prompt, device, 1, cfg, negative_prompt)
        return {"prompt_embeds": pe, **({"negative_prompt_embeds": npe} if cfg else {})}

    def prompt_report(self, prompt: str) -> dict:
        """What the text encoder makes of a prompt: words it does not know, and whether it was truncated."""
        from sae.tokenizer import unknown_words

        tokenizer = self.pipeline.tokenizer
        ids = tokenizer(prompt, truncation=False).input_ids
        report = {"truncated": len(ids) > tokenizer.model_max_length, "unknown_words": []}
        if self.model.name in ("toy", "tiny-random-sd", "tiny-random-sdxl"):
            report["unknown_words"] = unknown_words(tokenizer, prompt)
        return report


def load_engine(model: str, sae_paths: list[str], device: str = "auto") -> Engine:
    """A model and its concepts (``sae_paths``, else the SAEs shipped with the model), ready to render."""
    loaded = load_model(model, device=device)
    return Engine(loaded, ConceptLibrary.load(sae_paths, loaded.profile, device=loaded.device))
