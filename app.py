"""Hugging Face Spaces entry point: the painting app on the default model.

On a ZeroGPU Space the ``spaces`` package is installed and ``spaces.GPU`` lends a GPU to each call that runs the
model; elsewhere the app runs as it is (``python app.py``). Set ``PAINT_APP_MODEL`` to serve another model.
"""

from __future__ import annotations

import os

from paint_app.engine import load_engine
from paint_app.ui import LAUNCH_OPTIONS, build_app

try:
    import spaces  # only present on Hugging Face Spaces

    GPU = spaces.GPU
except ImportError:
    GPU = None

MODEL = os.environ.get("PAINT_APP_MODEL", "toy")

demo = build_app(load_engine(MODEL, [], "auto"), gpu=GPU)

if __name__ == "__main__":
    demo.queue(default_concurrency_limit=4).launch(**LAUNCH_OPTIONS)
