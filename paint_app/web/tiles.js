// The concept tiles (a gr.HTML; paint_app/ui/widgets.py builds the value it shows and reads the actions it sends).
// A tile shows a concept's picture, name and note; clicking it sends {action: "pick", index, name, token}, its
// "erase" button {action: "erase", ...}: `token` names the tiles shown, so a click on tiles the server has
// replaced meanwhile is refused, not misread. Pictures arrive later than names (the server streams them in).
const root = element.querySelector(".pt-root");
const grid = root.querySelector(".pt-grid");
const empty = root.querySelector(".pt-empty");
// The newest grid shown. The server's tokens only grow within a tab, so a grid with an older token is a late
// reply (the picture stream of tiles replaced since) and is not shown over the newer one.
let shown = null;

function send(action, index, tile) {
  trigger("input", { action, index, name: tile.name, token: (shown || {}).token });
}

function picture(tile) {
  if (tile.icon) {
    const image = document.createElement("img");
    image.className = "pt-icon";
    image.src = tile.icon;
    image.alt = tile.name;
    return image;
  }
  const box = document.createElement("div");
  box.className = "pt-icon pt-wait";
  return box;
}

function build(tile, index) {
  const card = document.createElement("div");
  card.className = "pt-tile" + (tile.paintable ? "" : " pt-off") + (tile.measured ? " pt-measured" : "");
  card.setAttribute("role", "listitem");
  card.dataset.name = tile.name;
  card.dataset.index = String(index);
  const pick = document.createElement("button");
  pick.type = "button";
  pick.className = "pt-pick";
  pick.disabled = !tile.paintable;
  pick.title = tile.paintable ? `Paint ${tile.name} on the active layer` : tile.why_not;
  pick.append(picture(tile));
  const name = document.createElement("span");
  name.className = "pt-name";
  name.textContent = tile.name;
  const note = document.createElement("span");
  note.className = "pt-note";
  note.textContent = tile.paintable ? tile.note : tile.why_not;
  pick.append(name, note);
  pick.addEventListener("click", () => send("pick", index, tile));
  const erase = document.createElement("button");
  erase.type = "button";
  erase.className = "pt-erase";
  erase.textContent = "erase";
  erase.disabled = !tile.paintable;
  erase.title = `A new layer that erases ${tile.name} where you paint it`;
  erase.addEventListener("click", () => send("erase", index, tile));
  card.append(pick, erase);
  return card;
}

function render() {
  const v = props.value || {};
  if (shown && Number.isInteger(v.token) && Number.isInteger(shown.token) && v.token < shown.token) return;
  shown = v;
  const tiles = v.tiles || [];
  const cards = grid.children;
  const same = String(v.token) === root.dataset.token && cards.length === tiles.length;
  if (same) {  // the same tiles: only pictures that arrived since
    tiles.forEach((tile, i) => {
      const old = cards[i].querySelector(".pt-icon");
      if (tile.icon && old.tagName !== "IMG") old.replaceWith(picture(tile));
    });
  } else {
    grid.replaceChildren(...tiles.map(build));
    grid.scrollTop = 0;
  }
  empty.textContent = tiles.length ? "" : (v.empty || "");
  root.dataset.query = v.query || "";
  root.dataset.token = String(v.token ?? "");
  root.dataset.pending = String(v.pending || 0);
  root.dataset.ready = "1";
}

watch("value", render);
render();
