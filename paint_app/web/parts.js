// "Concepts in this image" (a gr.HTML; paint_app/ui/parts.py builds the value it shows and reads the actions it
// sends). Per part of the image: its picture (the image, the rest faded), name and size; clicking it sends
// {action: "pick", index, name, token}: `token` names the parts shown, so a click on parts the server has replaced
// meanwhile is refused, not misread.
const root = element.querySelector(".pp-root");
const head = root.querySelector(".pp-head");
const grid = root.querySelector(".pp-grid");

function build(part, index) {
  const card = document.createElement("button");
  card.type = "button";
  card.className = "pp-tile" + (part.picked ? " pp-picked" : "");
  card.setAttribute("role", "listitem");
  card.dataset.name = part.name;
  card.dataset.index = String(index);
  card.title = part.picked ? `Select the layer of ${part.name}` : `Add ${part.name} as a layer to drag, scale or erase`;
  const pic = document.createElement("img");
  pic.className = "pp-pic";
  pic.src = part.icon;
  pic.alt = part.name;
  const name = document.createElement("span");
  name.className = "pp-name";
  name.textContent = part.name;
  const note = document.createElement("span");
  note.className = "pp-note";
  note.textContent = part.note;
  card.append(pic, name, note);
  card.addEventListener("click", () => {
    trigger("input", { action: "pick", index, name: part.name, token: (props.value || {}).token });
  });
  return card;
}

function render() {
  const v = props.value || {};
  const parts = v.parts || [];
  grid.replaceChildren(...parts.map(build));
  head.textContent = v.head || (parts.length ? "" : "Concepts in this image: find its parts (what the model drew) to drag, scale, copy or erase them.");
  root.dataset.token = String(v.token ?? "");
  root.dataset.count = String(parts.length);
}

watch("value", render);
render();
