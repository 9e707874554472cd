// The layer stack (a gr.HTML; paint_app/ui/widgets.py builds the value it shows and reads the actions it sends).
// Per layer: its picture or colour, its name, an eye, an amount slider (0..100%: how much of it acts) and a delete
// button. It sends {action: "select" | "eye" | "amount" | "delete", layer: id, on?: bool, value?: 0..100}; the
// amount goes when the slider is released (its label follows while dragging).
const root = element.querySelector(".ps-root");
const rows = root.querySelector(".ps-rows");
const empty = root.querySelector(".ps-empty");

function send(data) { trigger("input", data); }

function button(cls, text, title, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = cls;
  b.textContent = text;
  b.title = title;
  b.addEventListener("click", (event) => { event.stopPropagation(); onClick(); });
  return b;
}

function build(layer) {
  const row = document.createElement("div");
  row.className = "ps-row" + (layer.active ? " ps-active" : "") + (layer.enabled ? "" : " ps-hidden");
  row.setAttribute("role", "listitem");
  row.dataset.layer = layer.id;
  row.dataset.name = layer.name;
  const pic = document.createElement(layer.icon ? "img" : "div");
  pic.className = "ps-pic";
  if (layer.icon) pic.src = layer.icon;
  pic.style.borderColor = layer.color;
  pic.style.background = layer.icon ? "" : layer.color;
  const name = document.createElement("span");
  name.className = "ps-name";
  name.textContent = layer.name;
  name.title = layer.detail;
  const eye = button("ps-eye" + (layer.enabled ? "" : " ps-off"), layer.enabled ? "on" : "off",
                     layer.enabled ? "Switch this layer off" : "Switch this layer on",
                     () => send({ action: "eye", layer: layer.id, on: !layer.enabled }));
  const del = button("ps-delete", "✕", "Delete this layer", () => send({ action: "delete", layer: layer.id }));
  const amount = document.createElement("label");
  amount.className = "ps-amount";
  amount.addEventListener("click", (event) => event.stopPropagation());
  const [slider, shown] = valueSlider([0, 100, 5], layer.amount, "How much of this layer acts",
                                     (value) => `${value}%`, (value) => ({ action: "amount", layer: layer.id, value }));
  const sub = document.createElement("span");
  sub.className = "ps-sub";
  sub.textContent = layer.sub;
  if (layer.sub) name.append(" ", sub);
  amount.append("how much", slider, shown);
  row.append(pic, name, eye, del, amount);
  if (layer.scale !== undefined) row.append(partControls(layer));
  row.addEventListener("click", () => { if (!layer.active) send({ action: "select", layer: layer.id }); });
  return row;
}

// A part of the image (a move layer): its scale (0 erases, 1 as drawn, 2 stronger), "copy" (keep it where it was
// too) and "erase" (scale 0). The scale goes when the slider is released.
function partControls(layer) {
  const box = document.createElement("div");
  box.className = "ps-part";
  box.title = layer.summary || "";
  box.addEventListener("click", (event) => event.stopPropagation());
  const scale = document.createElement("label");
  scale.className = "ps-scale";
  const [slider, shown] = valueSlider([0, 2, 0.1], layer.scale, "Scale: 0 erases, 1 as drawn, 2 stronger",
                                     (value) => Number(value).toFixed(1),
                                     (value) => ({ action: "scale", layer: layer.id, value }));
  scale.append("scale", slider, shown);
  const copy = button("ps-copy" + (layer.copy ? " ps-on" : ""), "copy",
                      layer.copy ? "A copy: kept where it was too (click: move it instead)" :
                                   "Keep it where it was too (a copy)",
                      () => send({ action: "copy", layer: layer.id, on: !layer.copy }));
  const erase = button("ps-erase-part", "erase", "Erase it (scale 0)",
                       () => send({ action: "scale", layer: layer.id, value: 0 }));
  box.append(scale, copy, erase);
  return box;
}

// A range slider [min, max, step] with its value shown beside it (``format``); the action ``actionOf(value)`` is
// sent when the slider is released.
function valueSlider([min, max, step], value, title, format, actionOf) {
  const slider = document.createElement("input");
  slider.type = "range"; slider.min = String(min); slider.max = String(max); slider.step = String(step);
  slider.value = String(value);
  slider.title = title;
  const shown = document.createElement("span");
  shown.className = "ps-value";
  shown.textContent = format(value);
  slider.addEventListener("input", () => { shown.textContent = format(slider.value); });
  slider.addEventListener("change", () => send(actionOf(Number(slider.value))));
  return [slider, shown];
}

function render() {
  const v = props.value || {};
  const layers = v.layers || [];
  rows.replaceChildren(...layers.map(build));
  empty.textContent = layers.length ? "" : "No layer yet: click a concept tile, then paint.";
  root.dataset.active = v.active || "";
  root.dataset.count = String(layers.length);
}

watch("value", render);
render();
