"""Repaint latency in a real browser: from a stroke's mouse-up to the new image being displayed.

Serves the painting app on 127.0.0.1 (toy model by default), drives headless chromium with Playwright, paints
``--strokes`` strokes with real mouse events, and times each one inside the page: ``pointerup`` on the canvas to
the new output image decoded. The server side records, per stroke, the time in the handler and in the pipeline
call, so the total splits into generation, the rest of the server (mask decode, layer update) and the browser plus
transport (canvas read-out, event, queue, image download). Prints median, p90 and the shares.

The painter's page makes the concept tiles' pictures in the background after it opens (one generation each,
cached per engine); the strokes are timed once they are all made, as a person paints after the page settled.
With ``--word``, the first concept tile for that word is picked before painting (default: the first layer the
page opens with, as before the tiles existed).

    python benchmarks/repaint_latency.py [--model toy] [--strokes 30] [--threads N] [--word WORD] [--sae PATH ...]
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
FALLBACK = "tiny-random-sd"

# Record pointerup on the canvas, and resolve when the output image's src changes and the new image is decoded.
WATCH_JS = """
() => {
  window.__up = null;
  document.addEventListener('pointerup', () => { window.__up = performance.now(); }, true);
}
"""
TILES_SETTLED = '#tiles .pt-root[data-token]:not([data-token=""])[data-pending="0"]'
WAIT_JS = """
async (old) => {
  const deadline = performance.now() + 60000;
  while (performance.now() < deadline) {
    const img = document.querySelector('#output img');
    if (img && img.src !== old) {
      await img.decode().catch(() => {});
      return {shown: performance.now(), up: window.__up, src: img.src};
    }
    await new Promise(r => requestAnimationFrame(r));
  }
  return null;
}
"""


def random_saes(folder: Path, blocks: list[tuple[str, int]]) -> list[str]:
    """Random SAEs with labels and factors on (block, channels): the cost of a repaint depends on their shapes only."""
    import torch

    from sae.factors import Factors, save_factors
    from sae.labels import Label, save_labels
    from sae.model import SAE, SAEConfig

    paths = []
    for block, channels in blocks:
        generator = torch.Generator().manual_seed(0)
        sae = SAE(SAEConfig(d_in=channels, n_features=64, k=4, block=block))
        sae.reset_parameters(generator)
        sae.set_feature_statistics(0.5 + torch.rand(64, generator=generator), 0.05 * torch.ones(64))
        sae.save_pretrained(folder / block)
        save_labels(folder / block, {0: Label("red thing", 1.0, "user"), 1: Label("blue thing", 0.9, "user")})
        save_factors(folder / block, Factors((torch.rand(2, 64, generator=generator) > 0.8).float() + 1e-3))
        paths.append(str(folder / block))
    return paths


def load(model: str, sae_paths: list[str], device: str, scratch: Path):
    from paint_app.concepts import ConceptLibrary
    from paint_app.engine import load_engine
    from paint_app.errors import PaintError

    notes = []
    try:
        engine = load_engine(model, sae_paths, device)
    except PaintError as exc:
        if model != "toy":
            raise
        notes.append(f"NOTE: model 'toy' is not available ({exc}); measured on {FALLBACK} instead. Rerun once "
                     "paint_app/assets/toy exists for the figures the issue asks for.")
        engine = load_engine(FALLBACK, sae_paths, device)
    if not engine.concepts.blocks:
        profile = engine.model.profile
        blocks = [(b.name, b.channels) for b in profile.blocks[:2]]
        engine.concepts = ConceptLibrary.load(random_saes(scratch, blocks), profile, device=engine.model.device)
        notes.append(f"NOTE: model {engine.model.name!r} has no SAEs; painting with random SAEs (64 features) on "
                     f"{', '.join(name for name, _ in blocks)}.")
    return engine, "\n".join(notes) or None


class Recorder:
    """Wraps the engine's pipeline call and the canvas handler to time the server's share of each stroke."""

    def __init__(self, engine, app) -> None:
        self.generation: list[float] = []
        self.handler: list[float] = []
        self.lock = threading.Lock()
        generate_timed = engine.generate_timed
        canvas_edit = app.canvas_edit

        def timed_generation(session, *args, **kwargs):
            result = generate_timed(session, *args, **kwargs)
            with self.lock:
                self.generation.append(result.seconds)
            return result

        def timed_handler(*args, **kwargs):
            start = time.perf_counter()
            result = canvas_edit(*args, **kwargs)
            if "output" in result:
                with self.lock:
                    self.handler.append(time.perf_counter() - start)
            return result

        engine.generate_timed = timed_generation
        app.canvas_edit = timed_handler  # build_app binds handlers after this


def serve(engine):
    from paint_app.ui import LAUNCH_OPTIONS, PaintApp, build_app

    original_init = PaintApp.__init__
    holder = {}

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        holder["recorder"] = Recorder(engine, self)

    PaintApp.__init__ = init
    try:
        blocks = build_app(engine)
    finally:
        PaintApp.__init__ = original_init
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    blocks.queue()
    _, url, _ = blocks.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                              **LAUNCH_OPTIONS)
    return blocks, url, holder["recorder"]


def stroke(page, fy: float, fx0: float, fx1: float) -> None:
    """A horizontal stroke across the canvas's picture at height ``fy``, from ``fx0`` to ``fx1`` (fractions)."""
    drawing = page.locator("#canvas canvas").first
    box = drawing.bounding_box()
    side = min(box["width"], box["height"]) * 0.9
    left, top = box["x"] + (box["width"] - side) / 2, box["y"] + (box["height"] - side) / 2
    y, x0, x1 = top + side * fy, left + side * fx0, left + side * fx1
    page.mouse.move(x0, y)
    page.mouse.down()
    for i in range(1, 9):
        page.mouse.move(x0 + (x1 - x0) * i / 8, y)
    page.mouse.up()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toy")
    parser.add_argument("--sae", action="append", default=[], metavar="PATH")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--strokes", type=int, default=30)
    parser.add_argument("--word", default="", help="pick the first concept tile for this word before painting")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads (0: what `paint-app serve` picks: half the cores)")
    args = parser.parse_args(argv)
    if args.strokes < 1:
        parser.error("--strokes must be at least 1")

    import torch
    from playwright.sync_api import sync_playwright

    from paint_app.cli import serving_threads

    torch.set_num_threads(serving_threads(args.threads))
    scratch = Path(tempfile.mkdtemp(prefix="repaint-bench-"))
    engine, note = load(args.model, args.sae, args.device, scratch)
    blocks, url, recorder = serve(engine)
    latencies: list[float] = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(120_000)
            page.goto(url)
            page.wait_for_selector("#output img")
            page.wait_for_function("() => document.querySelector('#layer-info')?.innerText.length > 0")
            icons_started = time.perf_counter()
            page.wait_for_selector(TILES_SETTLED, state="attached")  # the tiles' pictures, made after opening
            icons_seconds = time.perf_counter() - icons_started
            if args.word:
                box = page.locator("#tile-search input")
                box.click()
                box.press_sequentially(args.word)
                page.wait_for_selector(f'#tiles .pt-root[data-query="{args.word}"]', state="attached")
                page.locator("#tiles .pt-tile .pt-pick").first.click()
                page.wait_for_function("w => document.querySelector('#layer-info')?.innerText.startsWith(w)",
                                       arg=args.word)
                page.wait_for_selector(TILES_SETTLED, state="attached")
            page.locator("#canvas canvas").first.scroll_into_view_if_needed()
            page.evaluate(WATCH_JS)
            for fy in (0.03, 0.97):  # the first strokes pay for lazy set-up in the browser and the server
                old = page.locator("#output img").get_attribute("src")
                stroke(page, fy, 0.1, 0.9)
                page.evaluate(WAIT_JS, old)
            recorder.generation.clear()
            engine.step_cache.replayed = 0
            recorder.handler.clear()
            for index in range(args.strokes):
                old = page.locator("#output img").get_attribute("src")
                # each stroke covers new pixels, so each one changes the mask and repaints
                fy = 0.1 + 0.8 * index / max(1, args.strokes - 1)
                stroke(page, fy, *((0.1, 0.5) if index % 2 == 0 else (0.5, 0.9)))
                seen = page.evaluate(WAIT_JS, old)
                if seen is None or seen["up"] is None:
                    raise RuntimeError(f"stroke {index}: the image did not change within 60 s")
                latencies.append((seen["shown"] - seen["up"]) / 1000)
            browser.close()
    finally:
        blocks.close()

    generation, handler = list(recorder.generation), list(recorder.handler)  # before the plain runs below
    if not len(generation) == len(handler) == len(latencies):
        print(f"warning: {len(generation)} generations and {len(handler)} handler calls for {len(latencies)} "
              "strokes; shares use the totals", file=sys.stderr)
    total, gen_total = sum(latencies), sum(generation)
    server_rest = sum(handler) - gen_total
    browser_rest = total - sum(handler)
    median = statistics.median(latencies)
    replayed = engine.step_cache.replayed
    from paint_app.step_cache import StepCache

    engine.step_cache = StepCache(size=0)  # the plain image from scratch, as a first Generate makes it
    plain = []
    settings = blocks.paint_app.default_settings()
    for _ in range(5):
        plain.append(engine.generate_timed(settings).seconds)

    print("repaint latency, stroke mouse-up -> new image shown (headless chromium, local server)")
    if note:
        print(note)
    print(f"model {engine.model.name}, {settings.width}x{settings.height}, {settings.steps} steps; device "
          f"{engine.model.device} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch threads {torch.get_num_threads()})")
    print(f"strokes: {len(latencies)}" + (f", painting the first tile for {args.word!r}" if args.word else
                                          ", painting the page's first layer"))
    print(f"tiles' pictures made after the page opened (before timing): {icons_seconds:.1f} s")
    print(f"latency  median {1000 * median:.0f} ms   p90 {1000 * percentile(latencies, 0.9):.0f} ms   "
          f"min {1000 * min(latencies):.0f} ms   max {1000 * max(latencies):.0f} ms   (target median <= 400 ms)")
    print(f"generation (pipeline call with edits): median {1000 * statistics.median(generation):.0f} ms; "
          f"{100 * gen_total / total:.0f}% of all latency; UNet calls replayed from the plain image (steps no layer "
          f"touches): {replayed / max(1, len(generation)):.1f} per repaint of {settings.steps}")
    print(f"rest of the server handler (mask bytes decoded, layer updated): {100 * server_rest / total:.0f}%")
    print(f"browser + transport + queue (mask bytes, event, queue, image download): {100 * browser_rest / total:.0f}%")
    print(f"plain generation without edits, same settings, every step computed, median of 5: "
          f"{1000 * statistics.median(plain):.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
