"""Soak: N browser contexts painting at once against one server, for a few minutes per N.

Starts ``paint-app serve`` (the toy model by default) on a free port in its own process, opens N contexts of one
headless chromium, and lets each paint its own strokes with real mouse events in a loop: a brush stroke across a
row, then the eraser over the left half of the same row, so every stroke changes the mask and repaints. After
each repaint a context records the latency (``pointerup`` to the new image decoded, as
benchmarks/repaint_latency.py times it), the image it received and its session (the page's "Download session").
At the end every recorded session is rendered in this process with the engine alone and compared, pixel for
pixel, with the image that context received. Prints, per N, the repaint median and p90 and the server's RSS
(psutil) when it was ready, when the painting started and when it ended; ``--json`` writes the same figures.

    python benchmarks/soak.py --contexts 4 8 --minutes 2 --json soak.json [--model toy] [--threads 0]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from repaint_latency import CHROMIUM, CHROMIUM_ARGS, TILES_SETTLED, WAIT_JS, WATCH_JS, percentile

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
WAIT_MS = 180_000
# `paint-app serve`, except that Gradio's start-up probe of its own URL (one HEAD request, 3 s timeout) is left to
# start_server, which waits longer: on a loaded machine the probe times out and Gradio refuses to start.
SERVE = ("import sys, gradio.networking; gradio.networking.url_ok = lambda url: True; "
         "from paint_app.cli import main; sys.argv[0] = 'paint-app'; sys.exit(main())")


@dataclass
class Repaint:
    latency: float  # seconds, pointerup -> new image decoded
    image: bytes  # the PNG the page showed
    session: str  # the session file the page handed over right after


@dataclass
class Context:
    index: int
    repaints: list[Repaint] = field(default_factory=list)
    timeouts: int = 0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(model: str, threads: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    command = [sys.executable, "-c", SERVE, "serve", "--model", model, "--port", str(port), "--threads", str(threads)]
    log = tempfile.NamedTemporaryFile("w+", prefix="soak-server-", suffix=".log", delete=False)
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    url, deadline = f"http://127.0.0.1:{port}/", time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server stopped: {Path(log.name).read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                if answer.status == 200:
                    return server, url
        except OSError:
            time.sleep(0.5)  # the server is still loading: poll again
    server.kill()
    raise RuntimeError("the server did not answer within 300 s")


def rss(pid: int) -> int:
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss
    except ImportError:
        fields = Path(f"/proc/{pid}/status").read_text().split("VmRSS:")[1].split()
        return int(fields[0]) * 1024


async def stroke(page, fy: float, fx0: float, fx1: float) -> None:
    """A horizontal stroke across the canvas at height ``fy``, from ``fx0`` to ``fx1`` (fractions)."""
    box = await page.locator("#canvas canvas.pc-view").bounding_box()
    y = box["y"] + box["height"] * fy
    x0, x1 = box["x"] + box["width"] * fx0, box["x"] + box["width"] * fx1
    await page.mouse.move(x0, y)
    await page.mouse.down()
    for i in range(1, 9):
        await page.mouse.move(x0 + (x1 - x0) * i / 8, y)
    await page.mouse.up()


async def open_page(browser, url: str):
    context = await browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page = await context.new_page()
    page.set_default_timeout(WAIT_MS)
    await page.goto(url)
    await page.wait_for_selector("#output img")
    await page.wait_for_function("() => document.querySelector('#layer-info')?.innerText.length > 0")
    await page.wait_for_selector("#canvas .pc-root[data-layer]:not([data-layer=''])", state="attached")
    await page.wait_for_selector(TILES_SETTLED, state="attached")  # the tiles' pictures, made after opening
    await page.locator("#canvas canvas.pc-view").scroll_into_view_if_needed()
    await page.evaluate(WATCH_JS)
    return context, page


async def paint(page, record: Context, count: int, start: asyncio.Event, stop_at: list[float]) -> None:
    """Stroke, wait for the new image, keep it and the session; until the shared deadline."""
    await start.wait()
    step = 0
    while time.monotonic() < stop_at[0]:
        row = 0.08 + 0.84 * (((step // 2) * 0.618 + record.index / count) % 1.0)
        tool = "brush" if step % 2 == 0 else "eraser"
        await page.click(f"#canvas [data-tool={tool}]")
        old = await page.locator("#output img").get_attribute("src")
        await stroke(page, row, 0.1, 0.9 if tool == "brush" else 0.5)
        seen = await page.evaluate(WAIT_JS, old)
        if seen is None or seen["up"] is None:
            record.timeouts += 1
            status = await page.locator("#status").inner_text()
            print(f"context {record.index}, stroke {step} ({tool}, row {row:.2f}): no new image within 60 s; "
                  f"the page's status: {status!r}", file=sys.stderr)
            shot = Path(tempfile.gettempdir()) / f"soak-timeout-{record.index}-{step}.png"
            await page.screenshot(path=str(shot))
            print(f"the page then: {shot}", file=sys.stderr)
            break
        image = await (await page.request.get(seen["src"])).body()
        async with page.expect_download() as download:
            await page.click("#download")
        path = await (await download.value).path()
        record.repaints.append(Repaint((seen["shown"] - seen["up"]) / 1000, image, Path(path).read_text()))
        step += 1


async def soak(url: str, count: int, seconds: float, server_pid: int) -> dict:
    from playwright.async_api import async_playwright

    records = [Context(i) for i in range(count)]
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        opened = time.monotonic()
        pages = await asyncio.gather(*(open_page(browser, url) for _ in range(count)))
        opening = time.monotonic() - opened
        start, stop_at = asyncio.Event(), [time.monotonic() + seconds]
        rss_start = rss(server_pid)
        peak = [rss_start]

        async def sample():
            while not start.is_set() or time.monotonic() < stop_at[0]:
                peak[0] = max(peak[0], rss(server_pid))
                await asyncio.sleep(2)  # a sampling interval, not a wait for an event

        sampler = asyncio.create_task(sample())
        painters = [asyncio.create_task(paint(page, record, count, start, stop_at))
                    for (_, page), record in zip(pages, records)]
        stop_at[0] = time.monotonic() + seconds
        start.set()
        await asyncio.gather(*painters)
        rss_end = rss(server_pid)
        await sampler
        for context, _ in pages:
            await context.close()
        await browser.close()
    return {"records": records, "opening_s": opening, "rss_start": rss_start, "rss_end": rss_end,
            "rss_peak": max(peak[0], rss_end)}


def native(png: bytes, width: int, height: int):
    """The image's pixels at the session's size: the page shows it enlarged by a whole factor (nearest)."""
    import numpy as np
    from PIL import Image

    shown = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    scale = shown.shape[1] // width
    small = shown[::scale, ::scale]
    if small.shape[:2] != (height, width) or not np.array_equal(small.repeat(scale, 0).repeat(scale, 1), shown):
        return None
    return small


def check(engine, records: list[Context]) -> tuple[int, int]:
    """Render each recorded session alone; (images compared, images that differ from what the context got)."""
    import numpy as np

    from paint_app.session import Session

    rendered: dict[str, object] = {}
    compared = differ = 0
    for record in records:
        for repaint in record.repaints:
            key = hashlib.sha256(repaint.session.encode()).hexdigest()
            session = Session.from_json(repaint.session)
            if key not in rendered:
                rendered[key] = np.asarray(engine.generate(session).convert("RGB"))
            got = native(repaint.image, session.width, session.height)
            compared += 1
            differ += got is None or not np.array_equal(got, rendered[key])
    return compared, differ


def summary(count: int, minutes: float, run: dict, compared: int, differ: int) -> dict:
    latencies = [r.latency for record in run["records"] for r in record.repaints]
    return {
        "contexts": count, "minutes": minutes, "repaints": len(latencies),
        "repaints_per_context": [len(record.repaints) for record in run["records"]],
        "timeouts": sum(record.timeouts for record in run["records"]),
        "latency_median_ms": round(1000 * statistics.median(latencies)) if latencies else None,
        "latency_p90_ms": round(1000 * percentile(latencies, 0.9)) if latencies else None,
        "latency_max_ms": round(1000 * max(latencies)) if latencies else None,
        "images_compared": compared, "images_differing": differ, "pages_opened_s": round(run["opening_s"], 1),
        "server_rss_mb": {"start": round(run["rss_start"] / 2**20), "end": round(run["rss_end"] / 2**20),
                          "peak": round(run["rss_peak"] / 2**20)},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--model", default="toy")
    parser.add_argument("--threads", type=int, default=0, help="the server's torch threads (0: half the cores)")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    if min(args.contexts) < 1 or args.minutes <= 0:
        parser.error("--contexts must be at least 1 and --minutes positive")

    import torch

    from paint_app.engine import load_engine

    server, url = start_server(args.model, args.threads)
    results = {"model": args.model, "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} "
               f"cores", "server": f"paint-app serve --model {args.model} --threads {args.threads}",
               "server_rss_ready_mb": round(rss(server.pid) / 2**20), "runs": []}
    runs = []
    try:
        for count in args.contexts:
            runs.append((count, asyncio.run(soak(url, count, 60 * args.minutes, server.pid))))
        results["server_rss_final_mb"] = round(rss(server.pid) / 2**20)
    finally:
        server.terminate()
        server.wait(timeout=60)

    torch.set_num_threads(1)
    engine = load_engine(args.model, [], "cpu")
    print(f"soak: {args.model}, one server ({results['server']}), headless chromium; {results['machine']}")
    print(f"server RSS when ready: {results['server_rss_ready_mb']} MB; after every run: "
          f"{results['server_rss_final_mb']} MB")
    for count, run in runs:
        compared, differ = check(engine, run["records"])
        row = summary(count, args.minutes, run, compared, differ)
        results["runs"].append(row)
        rss_mb = row["server_rss_mb"]
        print(f"N={count}: {row['repaints']} repaints in {args.minutes:g} min ({row['repaints_per_context']} per "
              f"context, {row['timeouts']} timed out); latency median {row['latency_median_ms']} ms, p90 "
              f"{row['latency_p90_ms']} ms, max {row['latency_max_ms']} ms; images equal to their session "
              f"rendered alone: {compared - differ}/{compared}; server RSS start {rss_mb['start']} MB, end "
              f"{rss_mb['end']} MB, peak {rss_mb['peak']} MB")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 1 if any(r["images_differing"] or r["timeouts"] for r in results["runs"]) else 0


if __name__ == "__main__":
    sys.exit(main())
