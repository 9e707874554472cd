"""The page: its components and the wiring of their events to ``PaintApp``'s handlers (no handler logic here).

Every event's output components come from its handler's ``@outputs`` declaration (``Wiring.wire``), so a handler
and the page cannot disagree silently: a key a handler returns that its declaration lacks becomes the generic
warning (``outputs.guarded``), and ``tests/test_ui_outputs.py`` checks the declarations against the wiring.
The canvas (``web_canvas``, a small script in a ``gr.HTML``) edits one layer at a time; a stroke or a drag sends
that layer's whole mask or offset back as the data of one event. Downloads are written when clicked: the click's
handler writes the file into a hidden ``gr.File``, and ``SAVE_FILE_JS`` then hands that file to the browser.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr

from .. import canvas, web_canvas
from ..engine import Engine
from ..modes import NAMES as MODES
from ..session import MAX_STRENGTH
from . import widgets
from .api import attach_api, hide_page_events
from .factors import WEIGHT_HEADERS
from .handlers import PaintApp
from .inspector import FACTOR_HEADERS, INSPECT_HEADERS
from .outputs import OUTPUT_TARGET
from .palette import PALETTE_HEADERS
from .parts import DEFAULT_PARTS
from .state import new_tab_state
from .wiring import Wired, Wiring

CSS = """
#output img, #heat img, #preview img, #examples img { image-rendering: pixelated; }
#status { height: 2.7em; overflow-y: auto; font-size: 0.85em; }  /* fixed: the canvas never moves under the brush */
#status p { margin: 0 0 0.2em; }
#title h1 { font-size: 1.25em; margin: 0; }
#title p { margin: 0; font-size: 0.85em; color: #666; }
#canvas-col, #image-col { min-width: 290px; max-width: 310px; }
#output { max-width: 310px; }
.seed-label { display: inline-block; padding-top: 0.6em; color: #666; }
.seed-label-box { flex: 0 0 40px !important; min-width: 40px !important; }
#stack-col { min-width: 220px; max-width: 270px; }
#layer-info, #timing, #prompt-notes { font-size: 0.8em; }
#found-col { min-width: 300px; }
"""
# Run history would re-export the canvas after every stroke to keep a browser copy of each run: costly, unneeded.
LAUNCH_OPTIONS = {"css": CSS, "run_history": False}
# After a download button's handler wrote its file into a hidden gr.File: hand that file to the browser.
SAVE_FILE_JS = """(file) => {
  if (!file || !file.url) return;
  const link = document.createElement("a");
  link.href = file.url;
  link.download = file.orig_name || "download";
  document.body.appendChild(link);
  link.click();
  link.remove();
}"""


def components(app: PaintApp, engine: Engine) -> dict[str, Any]:
    """The page's components by name (the names handlers return), laid out inside the current ``gr.Blocks``.

    Canvas first: prompt and seed on one line above; canvas, image, concept tiles and the layer stack side by side;
    under them the inspector's concepts and the session files; settings (steps, guidance, size) and *Advanced*
    (the active layer's mode, block, steps and signed strength; moving; the raw feature, factor and recipe table;
    the inspector's tables; factors) folded away."""
    profile = engine.model.profile
    C: dict[str, Any] = {}
    C["state"] = gr.State(new_tab_state, delete_callback=app.forget)
    gr.Markdown(f"# paint-app · {engine.model.name}\nType a word, click a concept, paint it on the canvas: the "
                "image follows. Click the image to see what is there.", elem_id="title")
    with gr.Row(equal_height=True, elem_id="prompt-row"):
        C["prompt"] = gr.Textbox(label="Prompt", show_label=False, container=False, scale=6, elem_id="prompt",
                                 lines=1, max_lines=2,
                                 placeholder="Prompt (leave it empty: the model's own picture, painted where you paint)")
        gr.HTML("<span class='seed-label'>Seed</span>", padding=False, min_width=40, scale=0,
                elem_classes=["seed-label-box"])
        C["seed"] = gr.Number(label="Seed", show_label=False, container=False, value=0, precision=0,
                              elem_id="seed", scale=0, min_width=90)
        C["dice"] = gr.Button("Random seed", elem_id="dice", scale=0, min_width=110, size="md")
        C["generate"] = gr.Button("Generate", variant="primary", elem_id="generate", scale=0, min_width=120,
                                  size="md")
    C["status"] = gr.Markdown(elem_id="status")
    with gr.Row(equal_height=False):
        with gr.Column(scale=0, min_width=300, elem_id="canvas-col"):
            C["editor"] = gr.HTML(None, html_template=web_canvas.template(), css_template=web_canvas.style(),
                                  js_on_load=web_canvas.script(), elem_id="canvas")
            C["layer_info"] = gr.Markdown(elem_id="layer-info")
        with gr.Column(scale=0, min_width=300, elem_id="image-col"):
            C["output"] = gr.Image(label="Image (click to see what is there)", type="pil", format="png",
                                   interactive=False, elem_id="output", buttons=[], height=310)
            C["keep_outside"] = gr.Checkbox(label="Keep the rest of the image", value=True, elem_id="keep-outside")
            C["timing"] = gr.Markdown(elem_id="timing")
            with gr.Row(equal_height=True, elem_id="parts-row"):
                C["find_parts"] = gr.Button("Find its parts", elem_id="find-parts", size="sm", scale=2, min_width=90)
                C["parts_block"] = gr.Dropdown(app.part_blocks(), value=app.default_part_block(), label="Block", show_label=False,
                                               container=False, elem_id="parts-block", scale=2, min_width=90)
                C["parts_count"] = gr.Number(value=DEFAULT_PARTS, precision=0, label="Parts (2-8)", show_label=False,
                                             container=False, elem_id="parts-count", scale=1, min_width=50)
            C["parts"] = gr.HTML(None, elem_id="parts", **widgets.html_parts("parts"))
        with gr.Column(scale=2, min_width=320, elem_id="palette-col"):
            C["tile_search"] = gr.Textbox(label="Concepts", placeholder="type a word: red, striped, triangle …",
                                          elem_id="tile-search", lines=1, max_lines=1)
            C["tiles"] = gr.HTML(None, elem_id="tiles", **widgets.html_parts("tiles"))
        with gr.Column(scale=1, min_width=220, elem_id="stack-col"):
            gr.Markdown("**Layers**")
            C["stack"] = gr.HTML(None, elem_id="stack", **widgets.html_parts("stack"))
            with gr.Row():
                C["add_layer"] = gr.Button("+ New layer", elem_id="add-layer", size="sm")
                C["clear_layer"] = gr.Button("Clear", elem_id="clear-layer", size="sm")
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, elem_id="found-col"):
            C["found"] = gr.HTML(None, elem_id="found", **widgets.html_parts("found"))
        with gr.Column(scale=1):
            with gr.Row():
                C["download"] = gr.Button("Download session", elem_id="download", size="sm")
                C["download_image"] = gr.Button("Download image", elem_id="download-image", size="sm")
            # what a click wrote, which the page then hands to the browser (SAVE_FILE_JS)
            C["session_download"] = gr.File(visible=False, interactive=False, elem_id="session-file")
            C["image_download"] = gr.File(visible=False, interactive=False, elem_id="image-file")
            C["session_upload"] = gr.File(label="Open a session file", file_types=[".json"], type="filepath",
                                          elem_id="session-upload", height=80)
    with gr.Accordion("Settings: negative prompt, steps, guidance, size", open=False, elem_id="settings"):
        with gr.Row():
            C["negative"] = gr.Textbox(label="Negative prompt", scale=3, elem_id="negative")
            C["steps"] = gr.Number(label="Steps", value=profile.steps, precision=0, elem_id="steps")
            C["guidance"] = gr.Number(label="Guidance", value=profile.guidance, elem_id="guidance")
            C["width"] = gr.Number(label="Width", value=profile.width, precision=0, elem_id="width")
            C["height"] = gr.Number(label="Height", value=profile.height, precision=0, elem_id="height")
        with gr.Row():
            C["manual"] = gr.Checkbox(label="Apply on button (for slow machines)", value=False, elem_id="manual")
            C["apply"] = gr.Button("Apply", elem_id="apply", size="sm")
        C["prompt_notes"] = gr.Markdown(elem_id="prompt-notes")
    with gr.Accordion("Advanced: the active layer's edit, moving it, raw features and factors", open=False,
                      elem_id="advanced"):
        with gr.Tab("Layer"):
            with gr.Row():
                C["mode"] = gr.Radio(list(MODES), value="add", label="Mode", elem_id="mode")
                C["strength"] = gr.Number(label=f"Strength (-{MAX_STRENGTH:g} to {MAX_STRENGTH:g}; a part's scale: "
                                                "0 erases, 1 as drawn, 2 stronger)",
                                          value=profile.layer_strength, elem_id="strength")
            with gr.Row(visible=profile.steps > 1):
                C["step_start"] = gr.Number(label="From step", precision=0, elem_id="step-start")
                C["step_end"] = gr.Number(label="To step (empty: all)", precision=0, elem_id="step-end")
            with gr.Row():
                C["move_step"] = gr.Number(label="Move by (px)", value=4, precision=0, elem_id="move-step",
                                           min_width=80)
                for direction, arrow in (("left", "←"), ("up", "↑"), ("down", "↓"), ("right", "→")):
                    C[f"move_{direction}"] = gr.Button(arrow, elem_id=f"move-{direction}", min_width=40)
                C["move_reset"] = gr.Button("Reset move", elem_id="move-reset")
            C["click_mode"] = gr.Radio([("inspect", "inspect"), ("move the active layer here", "move")],
                                       value="inspect", label="Clicking the image will", elem_id="click-mode")
            C["mask_upload"] = gr.File(label="Mask from a picture (alpha, else brightness)", file_count="single",
                                       type="filepath", elem_id="mask-upload", height=80)
        with gr.Tab("Palette"):
            with gr.Row():
                C["search_text"] = gr.Textbox(label="Search features, factors, recipes by words",
                                              elem_id="palette-search", scale=3)
                C["search_block"] = gr.Dropdown(app.block_choices(), value="all blocks", label="Block",
                                                elem_id="palette-block")
                C["search_kind"] = gr.Radio(["features", "factors", "recipes", "mine"], value="features",
                                            label="Kind", elem_id="palette-kind")
                C["search"] = gr.Button("Search", elem_id="palette-go")
            with gr.Row():
                C["palette_table"] = gr.Dataframe(headers=PALETTE_HEADERS, datatype="str", interactive=False,
                                                  elem_id="palette-table", max_height=360, type="array",
                                                  column_widths=["10%", "40%", "7%", "17%", "14%", "12%"])
                with gr.Column():
                    C["palette_info"] = gr.Markdown(elem_id="palette-info")
                    C["preview"] = gr.Image(label="Preview", type="pil", interactive=False, elem_id="preview",
                                            format="png")
                    C["examples"] = gr.Gallery(label="Top examples", elem_id="examples", columns=4, height=200)
        with gr.Tab("Inspector"):
            C["inspect_info"] = gr.Markdown("Click a point of the image.", elem_id="inspect-info")
            with gr.Row():
                C["inspect_table"] = gr.Dataframe(headers=INSPECT_HEADERS, interactive=False, type="array",
                                                  elem_id="inspect-table")
                C["heat"] = gr.Image(label="Heatmap", type="pil", interactive=False, elem_id="heat", format="png")
            C["factor_table"] = gr.Dataframe(headers=FACTOR_HEADERS, interactive=False, type="array",
                                             elem_id="factor-table", label="Strongest factors there")
            with gr.Row():
                C["layer_mode"] = gr.Radio(["erase", *[m for m in MODES if m != "erase"]], value="erase",
                                           label="New layer mode", elem_id="inspect-mode")
                C["layer_from_feature"] = gr.Button("Make a layer of this feature where it is",
                                                    elem_id="inspect-layer")
        with gr.Tab("Factors"):
            with gr.Row():
                C["factor_pick"] = gr.Dropdown(app.factor_choices(), label="Factor", elem_id="factor-pick")
                C["concept_name"] = gr.Textbox(label="Name of the new concept", elem_id="concept-name")
                C["save_factor"] = gr.Button("Save as a concept of my own", elem_id="save-factor")
            with gr.Row():  # the same table for a part of the image: its features' gains
                C["edit_part"] = gr.Button("Edit the selected part's make-up", elem_id="edit-part")
                C["apply_gains"] = gr.Button("Apply to the part", elem_id="apply-gains")
            C["factor_weights"] = gr.Dataframe(headers=WEIGHT_HEADERS, interactive=True, type="array",
                                               elem_id="factor-weights",
                                               label="Features and weights (edit the weights)")
    return C


def wire_events(blocks: gr.Blocks, app: PaintApp, C: dict[str, Any],
                gpu: Callable[[Callable], Callable] | None) -> list[Wired]:
    w = Wiring(blocks, app, C, gpu)
    settings = ["prompt", "negative", "seed", "steps", "guidance", "width", "height"]
    icons = {"concurrency_id": "icons", "concurrency_limit": 1, "show_progress": "hidden"}
    w.wire("page.load", "start", ["state"]).then(*w.stream("fill_icons", ["state"]), **icons)
    parts = ["state", "parts_block", "parts_count"]
    for trigger in ("generate.click", "prompt.submit"):  # the parts follow a new image once they were asked for
        made = w.wire(trigger, "generate", ["state", *settings])
        w.wire((f"{trigger}.then", made.then), "refresh_parts", parts, show_progress="hidden")
    w.wire("find_parts.click", "find_parts", parts)
    w.wire("dice.click", "dice", [], engine=False)

    def on_action(run):  # a component's script sent an action as the event's data (canvas, tiles, stack, found)
        def handler(state, manual, evt: gr.EventData):
            return run(state, evt._data, not manual)
        return handler

    # latest edit wins: each one carries the layer's whole mask, so skipping a queued one loses nothing
    w.respond("editor.input", "canvas_edit", on_action, ["state", "manual"], trigger_mode="always_last",
              show_progress="hidden")
    for trigger in ("tile_search.change", "tile_search.submit"):
        w.wire(trigger, "find_tiles", ["state", "tile_search"], engine=False, trigger_mode="always_last",
               show_progress="hidden").then(*w.stream("fill_icons", ["state"]), **icons)
    w.respond("tiles.input", "tile_action", on_action, ["state", "manual"])
    w.respond("stack.input", "stack_action", on_action, ["state", "manual"])
    w.respond("found.input", "found_action", on_action, ["state", "manual"])
    w.respond("parts.input", "part_action", on_action, ["state", "manual"])
    w.wire("apply.click", "apply", ["state"])
    w.wire("add_layer.click", "add_layer", ["state"], engine=False)
    w.wire("clear_layer.click", "clear_layer", ["state", "manual"], live=True)
    w.wire("mode.input", "set_mode", ["state", "mode", "manual"], live=True)
    for trigger in ("strength.submit", "strength.blur"):
        w.wire(trigger, "set_strength", ["state", "strength", "manual"], live=True, trigger_mode="always_last")
    for trigger in ("step_start.submit", "step_start.blur", "step_end.submit", "step_end.blur"):
        w.wire(trigger, "set_step_range", ["state", "step_start", "step_end", "manual"], live=True,
               trigger_mode="always_last")
    w.wire("keep_outside.input", "set_keep_outside", ["state", "keep_outside", "manual"], live=True)
    w.wire("mask_upload.upload", "upload_mask", ["state", "mask_upload", "manual"], live=True,
           reset=("mask_upload",))
    for direction in ("left", "up", "down", "right"):
        w.wire(f"move_{direction}.click", "nudge", ["state", "move_step", "manual"], live=True, bind=(direction,),
               trigger_mode="always_last")
    w.wire("move_reset.click", "reset_offset", ["state", "manual"], live=True)

    def on_image_click(run):
        def handler(state, click_mode, manual, evt: gr.SelectData):
            x, y = evt.index if isinstance(evt.index, (list, tuple)) else (None, None)
            if x is not None and state.output is not None:  # the page shows the image enlarged
                scale = canvas.display_scale(*state.output.size, OUTPUT_TARGET)
                x, y = (x + 0.5) / scale, (y + 0.5) / scale
            return run(state, x, y, click_mode, not manual)
        return handler

    w.respond("output.select", "click_image", on_image_click, ["state", "click_mode", "manual"])
    for trigger in ("search.click", "search_text.submit"):
        w.wire(trigger, "search", ["state", "search_text", "search_block", "search_kind"], engine=False)

    def on_palette_pick(run):
        def handler(state, manual, evt: gr.SelectData):
            return run(state, evt.row_value, not manual)
        return handler

    pick = w.respond("palette_table.select", "pick_concept", on_palette_pick, ["state", "manual"])
    w.wire(("palette_table.select.then", pick.then), "preview", ["state"])

    def on_inspect_pick(run):
        def handler(state, evt: gr.SelectData):
            return run(state, evt.row_value)
        return handler

    w.respond("inspect_table.select", "show_heat", on_inspect_pick, ["state"])
    w.wire("layer_from_feature.click", "layer_from_selected", ["state", "layer_mode", "manual"], live=True)
    w.wire("factor_pick.input", "pick_factor", ["state", "factor_pick"], engine=False)
    w.wire("save_factor.click", "save_factor", ["state", "factor_pick", "factor_weights", "concept_name"],
           engine=False).then(*w.stream("fill_icons", ["state"]), **icons)
    w.wire("edit_part.click", "edit_part", ["state"], engine=False)
    w.wire("apply_gains.click", "apply_gains", ["state", "factor_weights", "manual"], live=True)
    w.wire("session_upload.upload", "load_session_file", ["state", "session_upload"], reset=("session_upload",))
    for button, name, file in (("download", "download_session", "session_download"),
                               ("download_image", "download_image", "image_download")):
        w.wire(f"{button}.click", name, ["state"], engine=False, reset=(file,)).then(
            None, inputs=[C[file]], outputs=None, js=SAVE_FILE_JS)
    return w.events


def build_app(engine: Engine, gpu: Callable[[Callable], Callable] | None = None,
              workdir: str | Path | None = None) -> gr.Blocks:
    """The Gradio page over ``engine``. ``gpu`` wraps the handlers that run the model (e.g. ``spaces.GPU``)."""
    app = PaintApp(engine, workdir)
    blocks = gr.Blocks(title="paint-app", fill_width=True)
    with blocks:
        C = components(app, engine)
        blocks.paint_wiring = wire_events(blocks, app, C, gpu)  # for tests: each event, handler and outputs
        blocks.paint_api = attach_api(app, gpu)  # the endpoints for scripts (render, features)
    hide_page_events(blocks)  # "Use via API" lists the endpoints for scripts only
    blocks.paint_components = C  # for tests: the components by the names handlers return
    blocks.paint_app = app  # for tests and the benchmark: the handlers behind the page
    return blocks


def serve(model: str = "toy", sae_paths: list[str] | None = None, device: str = "auto", host: str = "127.0.0.1",
          port: int = 7860, share: bool = False) -> None:
    """Load the model and its concepts, and serve the page until interrupted."""
    from ..engine import load_engine

    engine = load_engine(model, list(sae_paths or []), device)
    demo = build_app(engine)
    try:
        demo.queue(default_concurrency_limit=4).launch(server_name=host, server_port=port, share=share,
                                                       **LAUNCH_OPTIONS)
    finally:
        shutil.rmtree(demo.paint_app.workdir, ignore_errors=True)


__all__ = ["CSS", "LAUNCH_OPTIONS", "SAVE_FILE_JS", "build_app", "components", "serve", "wire_events"]
