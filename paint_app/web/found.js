// The inspector's concepts at a clicked point (a gr.HTML; paint_app/ui/widgets.py builds the value and reads the
// actions). Per concept: its picture or colour, name and value there, "erase this here" and "paint more of this",
// each sending {action: "erase" | "more", index, name, token} (`token` names the list shown).
const root = element.querySelector(".pf-root");
const head = root.querySelector(".pf-head");
const grid = root.querySelector(".pf-grid");

function build(item, index) {
  const card = document.createElement("div");
  card.className = "pf-tile";
  card.setAttribute("role", "listitem");
  card.dataset.name = item.name;
  const pic = document.createElement(item.icon ? "img" : "div");
  pic.className = "pf-pic";
  if (item.icon) pic.src = item.icon; else pic.style.background = item.color;
  const name = document.createElement("span");
  name.className = "pf-name";
  name.textContent = item.name;
  name.title = item.detail;
  const value = document.createElement("span");
  value.className = "pf-value";
  value.textContent = item.value;
  const actions = document.createElement("div");
  actions.className = "pf-actions";
  for (const [action, text, title] of [["erase", "erase this here", `A layer erasing ${item.name} where it is`],
                                       ["more", "paint more of this", `A layer painting ${item.name} where it is`]]) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = `pf-${action}`;
    b.textContent = text;
    b.title = title;
    b.addEventListener("click", () => trigger("input", { action, index, name: item.name, token: (props.value || {}).token }));
    actions.append(b);
  }
  card.append(pic, name, value, actions);
  return card;
}

function render() {
  const v = props.value || {};
  head.textContent = v.head || "Click the image to see the concepts there.";
  grid.replaceChildren(...(v.items || []).map(build));
  root.dataset.token = String(v.token ?? "");
}

watch("value", render);
render();
