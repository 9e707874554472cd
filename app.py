"""Hugging Face Spaces entry point: the painting app on ``PAINT_APP_MODEL`` with ``PAINT_APP_SAE`` (docs/space.md).

- ``PAINT_APP_MODEL``: toy, tiny-random-sd, tiny-random-sdxl, a hub id or a local folder; unset: the embedded toy.
- ``PAINT_APP_SAE``: comma-separated SAE presets, ``hf://`` URIs or folders (each what ``--sae`` takes); unset: the
  model's own (the SAEs shipped with it, else its default preset, ``paint_app.presets.DEFAULT_PRESETS``).

On a ZeroGPU Space the ``spaces`` package lends a GPU to each call that runs the model, for ``gpu_seconds`` at
most; elsewhere (``python app.py``) the app runs as it is. A model or SAEs that cannot be served stop the app at
start with a message that says what is allowed (exit status 1, no traceback).
"""

from __future__ import annotations

try:
    import spaces  # only on Hugging Face Spaces; first, before torch: ZeroGPU refuses to load after CUDA started
except ImportError:
    spaces = None

import math
import os

from paint_app.concepts import ConceptLibrary
from paint_app.engine import Engine
from paint_app.errors import PaintError
from paint_app.models import ModelProfile, load_model
from sae.errors import SAEError

MODEL = os.environ.get("PAINT_APP_MODEL", "").strip() or "toy"
SAE_PATHS = [path.strip() for path in os.environ.get("PAINT_APP_SAE", "").split(",") if path.strip()]
# ZeroGPU seconds for one call: moving the model to the lent GPU, then up to IMAGES_PER_CALL images (a repaint
# makes one or two; the concept tiles' pictures come several to a call) at IMAGE_STEP_SECONDS per step of a 512x512
# image, doubled with classifier-free guidance. 0.1 s is about twice an SD-1.5 UNet step at 512x512 in fp16 on an
# A100; the total is kept within what ZeroGPU lends.
WARM_UP_SECONDS, IMAGES_PER_CALL, IMAGE_STEP_SECONDS = 10, 16, 0.1
GPU_SECONDS_RANGE = (15, 120)


def gpu_seconds(profile: ModelProfile) -> int:
    """How long ZeroGPU lends the GPU to one call on this model, from its steps, size and guidance."""
    batch = 2 if profile.guidance > 1 else 1
    image = IMAGE_STEP_SECONDS * profile.steps * batch * profile.width * profile.height / 512**2
    low, high = GPU_SECONDS_RANGE
    return max(low, min(high, math.ceil(WARM_UP_SECONDS + IMAGES_PER_CALL * image)))


def load_engine_from_env(model: str, sae_paths: list[str]) -> Engine:
    """The model and its SAEs; what cannot be served stops the app with a message naming the variable."""
    try:
        loaded = load_model(model, device="auto")
    except (PaintError, SAEError) as exc:
        raise SystemExit(f"app.py: PAINT_APP_MODEL={model!r} cannot be served: {exc}") from None
    try:
        concepts = ConceptLibrary.load(sae_paths, loaded.profile, device=loaded.device)
    except (PaintError, SAEError) as exc:
        raise SystemExit(f"app.py: PAINT_APP_SAE={','.join(sae_paths)!r} cannot be served with {model!r}: {exc}. "
                         "Allowed: comma-separated presets, hf:// URIs or SAE folders, or unset for the model's "
                         "own SAEs") from None
    return Engine(loaded, concepts)


engine = load_engine_from_env(MODEL, SAE_PATHS)

from paint_app.ui import LAUNCH_OPTIONS, build_app  # noqa: E402 - after the checks above: they stop the app sooner

GPU = spaces.GPU(duration=gpu_seconds(engine.model.profile)) if spaces is not None else None
demo = build_app(engine, gpu=GPU)

if __name__ == "__main__":
    demo.queue(default_concurrency_limit=4).launch(**LAUNCH_OPTIONS)
