// The painting canvas (a gr.HTML component; see paint_app/web_canvas.py for the value it shows and the edits it sends).
// `element`, `props`, `trigger` and `watch` come from gradio. The active layer's mask is kept here, unshifted, at
// the canvas's resolution, in the red channel of an opaque grey canvas (red = mask strength). A brush stroke raises
// the mask to the brush opacity where it passes (max), the eraser lowers it (min); at pointer-up the whole mask goes
// to the server as raw bytes (one per canvas pixel, in base64; no image encoding), so a repaint costs one request.
const root = element.querySelector(".pc-root");
const view = root.querySelector("canvas.pc-view");
const ctx = view.getContext("2d");
const sizeInput = element.querySelector(".pc-size");
const opacityInput = element.querySelector(".pc-opacity");
const hint = element.querySelector(".pc-hint");
const mask = document.createElement("canvas");
const mctx = mask.getContext("2d", { willReadFrequently: true });
const strokeCanvas = document.createElement("canvas");
const sctx = strokeCanvas.getContext("2d");
const tint = document.createElement("canvas");
const tctx = tint.getContext("2d");
const UNDO_LIMIT = 30;
const TINT_ALPHA = 0.6;
const S = { w: 0, h: 0, scale: 1, layer: null, color: "#ff2d95", offset: [0, 0], bg: null, tool: "brush" };
let undo = [];
let drag = null;

function rgb(hex) {
  const n = parseInt(hex.replace("#", ""), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

function setTool(tool) {
  S.tool = tool;
  root.dataset.current = tool;
  element.querySelectorAll("[data-tool]").forEach((b) => b.classList.toggle("pc-on", b.dataset.tool === tool));
  view.style.cursor = tool === "move" ? "move" : "crosshair";
}

function refreshTint() {
  const W = mask.width, H = mask.height;
  if (!W || !H) return;
  const source = mctx.getImageData(0, 0, W, H).data;
  const out = tctx.createImageData(W, H);
  const [r, g, b] = rgb(S.color);
  for (let i = 0; i < source.length; i += 4) {
    out.data[i] = r; out.data[i + 1] = g; out.data[i + 2] = b; out.data[i + 3] = source[i] ? 64 + source[i] * 0.5 : 0;  // faint strokes stay visible
  }
  tctx.putImageData(out, 0, 0);
}

function draw(offset) {
  const [dx, dy] = offset || S.offset;
  ctx.imageSmoothingEnabled = false;
  ctx.clearRect(0, 0, view.width, view.height);
  if (S.bg) ctx.drawImage(S.bg, 0, 0, view.width, view.height);
  ctx.drawImage(tint, dx * S.scale, dy * S.scale);
}

function brushWidth() { return Math.max(1, Number(sizeInput.value)) * S.scale; }
function opacity() { return Math.min(1, Math.max(0.01, Number(opacityInput.value) / 100)); }

function tracePath(c, points) {
  c.lineCap = "round"; c.lineJoin = "round"; c.lineWidth = brushWidth();
  c.beginPath();
  c.moveTo(points[0][0], points[0][1]);
  if (points.length === 1) c.lineTo(points[0][0] + 0.01, points[0][1]);
  for (const [x, y] of points.slice(1)) c.lineTo(x, y);
  c.stroke();
}

function drawLiveStroke(points) {
  draw();
  ctx.save();
  ctx.globalAlpha = TINT_ALPHA * (S.tool === "eraser" ? 1 : opacity());
  ctx.strokeStyle = S.tool === "eraser" ? "#ffffff" : S.color;
  tracePath(ctx, points);
  ctx.restore();
}

function pointAt(event) {
  const box = view.getBoundingClientRect();
  return [(event.clientX - box.left) * view.width / box.width, (event.clientY - box.top) * view.height / box.height];
}

// The active layer's mask as the server reads it (web_canvas.decode_mask): the red channel, one byte per canvas
// pixel, row by row, in base64, with the canvas's size (the image's times the scale).
function maskBytes() {
  const W = mask.width, H = mask.height;
  const rgba = mctx.getImageData(0, 0, W, H).data;
  const bytes = new Uint8Array(W * H);
  for (let i = 0; i < bytes.length; i++) bytes[i] = rgba[4 * i];
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return { width: W, height: H, data: btoa(text) };
}

function send(kind) {
  trigger("input", { kind, layer: S.layer, width: S.w, height: S.h, offset: S.offset.slice(),
                     mask: kind === "move" ? null : maskBytes() });
}

function commitStroke(points) {
  const level = Math.round(255 * (S.tool === "eraser" ? 1 - opacity() : opacity()));
  sctx.clearRect(0, 0, strokeCanvas.width, strokeCanvas.height);
  sctx.strokeStyle = `rgb(${level},${level},${level})`;
  tracePath(sctx, points);
  undo.push(mctx.getImageData(0, 0, mask.width, mask.height));
  if (undo.length > UNDO_LIMIT) undo.shift();
  mctx.globalCompositeOperation = S.tool === "eraser" ? "darken" : "lighten";
  mctx.drawImage(strokeCanvas, -S.offset[0] * S.scale, -S.offset[1] * S.scale);  // shown -> unshifted
  mctx.globalCompositeOperation = "source-over";
  refreshTint();
  draw();
  send("stroke");
}

view.addEventListener("pointerdown", (event) => {
  if (!S.w || event.button !== 0) return;
  view.setPointerCapture(event.pointerId);
  const point = pointAt(event);
  drag = S.tool === "move" ? { start: point, offset: S.offset.slice() } : { points: [point] };
  if (drag.points) drawLiveStroke(drag.points);
});

view.addEventListener("pointermove", (event) => {
  if (!drag) return;
  const point = pointAt(event);
  if (drag.points) {
    drag.points.push(point);
    drawLiveStroke(drag.points);
  } else {
    drag.moved = [drag.offset[0] + Math.round((point[0] - drag.start[0]) / S.scale),
                  drag.offset[1] + Math.round((point[1] - drag.start[1]) / S.scale)];
    draw(drag.moved);
  }
});

function finish(event, cancelled) {
  if (!drag) return;
  const done = drag;
  drag = null;
  if (cancelled) { draw(); return; }
  if (done.points) {
    done.points.push(pointAt(event));
    commitStroke(done.points);
  } else if (done.moved && (done.moved[0] !== S.offset[0] || done.moved[1] !== S.offset[1])) {
    S.offset = done.moved;
    draw();
    send("move");
  }
}
view.addEventListener("pointerup", (event) => finish(event, false));
view.addEventListener("pointercancel", (event) => finish(event, true));

function undoStroke() {
  if (!undo.length) return;
  mctx.putImageData(undo.pop(), 0, 0);
  refreshTint();
  draw();
  send("stroke");
}

function resize(step) {
  const value = Math.min(Number(sizeInput.max), Math.max(Number(sizeInput.min), Number(sizeInput.value) + step));
  sizeInput.value = String(value);
  root.dataset.size = String(value);
}

element.querySelectorAll("[data-tool]").forEach((b) => b.addEventListener("click", () => setTool(b.dataset.tool)));
element.querySelector(".pc-undo").addEventListener("click", undoStroke);
sizeInput.addEventListener("input", () => { root.dataset.size = sizeInput.value; });

// Keys, anywhere on the page but never while typing in a text box: B brush, E eraser, M move, Ctrl/Cmd+Z undo,
// [ and ] brush size. One listener per page, replaced when the canvas loads again.
function typing(target) {
  if (!target || !target.closest) return false;
  return Boolean(target.closest("input:not([type=range]):not([type=checkbox]):not([type=radio]), textarea, select, [contenteditable=''], [contenteditable=true]"));
}

function onKey(event) {
  if (event.defaultPrevented || typing(event.target) || event.altKey || !S.w) return;
  const key = event.key.toLowerCase();
  if ((event.ctrlKey || event.metaKey) && !event.shiftKey && key === "z") {
    event.preventDefault();
    undoStroke();
    return;
  }
  if (event.ctrlKey || event.metaKey) return;
  const tools = { b: "brush", e: "eraser", m: "move" };
  if (tools[key]) { setTool(tools[key]); event.preventDefault(); }
  else if (event.key === "[") { resize(-1); event.preventDefault(); }
  else if (event.key === "]") { resize(1); event.preventDefault(); }
}
if (window.__paintCanvasKeys) document.removeEventListener("keydown", window.__paintCanvasKeys);
window.__paintCanvasKeys = onKey;
document.addEventListener("keydown", onKey);

function loadImage(src) {
  return new Promise((resolve) => {
    if (!src) { resolve(null); return; }
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => resolve(null);
    image.src = src;
  });
}

async function show() {
  const v = props.value || {};
  if (!v.width) return;
  if (v.tool) setTool(v.tool);  // e.g. a part of the image picked: the Move tool
  const sameLayer = v.layer === S.layer && v.width === S.w && v.height === S.h;
  const [bg, m] = await Promise.all([loadImage(v.background), loadImage(v.mask)]);
  Object.assign(S, { w: v.width, h: v.height, scale: v.scale, layer: v.layer, color: v.color,
                     offset: (v.offset || [0, 0]).slice(), bg });
  const W = S.w * S.scale, H = S.h * S.scale;
  for (const c of [view, mask, strokeCanvas, tint]) {
    if (c.width !== W) c.width = W;
    if (c.height !== H) c.height = H;
  }
  if (!sameLayer) undo = [];
  if (!sizeInput.dataset.set) {
    sizeInput.max = String(Math.max(4, Math.round(Math.max(S.w, S.h) / 3)));
    sizeInput.value = String(Math.max(2, Math.round(Math.max(S.w, S.h) / 12)));
    sizeInput.dataset.set = "1";
    root.dataset.size = sizeInput.value;
  }
  mctx.imageSmoothingEnabled = false;
  mctx.fillStyle = "#000";
  mctx.fillRect(0, 0, W, H);
  if (m) mctx.drawImage(m, 0, 0, W, H);
  refreshTint();
  draw();
  hint.textContent = v.hint || "";
  root.dataset.layer = S.layer === null ? "" : String(S.layer);
  root.dataset.ready = "1";
}

setTool("brush");
watch("value", show);
show();
