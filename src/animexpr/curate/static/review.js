// The review page: keyboard-first, every decision POSTed (and stored) the moment the key is pressed.
// The page holds no secret: with a token the server sets an HttpOnly cookie at login.

import { HandMode } from "/static/hand.js";

const $ = (selector) => document.querySelector(selector);
const AHEAD = 10; // crops leased ahead of the cursor, so the next one is already there
const PREFETCH = 4; // images loaded ahead
const STATS_EVERY_MS = 15000;
const RENEW_EVERY_MS = 60000;

const S = {
  config: null,
  reviewer: "",
  mode: "single",
  items: [], // this page session's crops: earlier decisions first, then the leased queue
  ids: new Set(),
  cursor: 0,
  exhausted: false,
  queueGeneration: 0,
  filter: {},
  order: "worst-first",
  marks: new Set(),
  gridSel: 0,
  gridSize: 0, // crops on a grid page: the whole rows that fit the window (fitGrid), at most config.grid_size
  gridColumns: 1,
  stats: null,
  decisionsSinceStats: 0,
  keyGeneration: 0,
};
const hand = new HandMode({ api, toast, showError, clearBanner, refreshStats, applyResult, render, classColor });
let keyChain = Promise.resolve();
let fetchChain = Promise.resolve();

// ---------------------------------------------------------------- server

async function api(path, body) {
  const init = { headers: { "X-Reviewer": S.reviewer } };
  if (body !== undefined) {
    init.method = "POST";
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    throw new Error("the review server cannot be reached (is `animexpr review` still running?)");
  }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error(data.error || `${response.status} ${response.statusText}`);
    error.status = response.status;
    throw error;
  }
  return data;
}

function fillQueue(ahead) {
  fetchChain = fetchChain.then(() => fetchUntil(ahead)).catch(showError);
  return fetchChain;
}

async function fetchUntil(ahead) {
  const generation = S.queueGeneration;
  while (!S.exhausted && S.items.length < S.cursor + ahead) {
    const count = Math.min(200, Math.max(AHEAD, S.cursor + ahead - S.items.length));
    const exclude = S.items.map((item) => item.id).slice(-4000);
    const data = await api("/api/next", { filter: S.filter, order: S.order, count, exclude });
    if (generation !== S.queueGeneration) return;
    for (const item of data.items) addItem(item);
    if (data.items.length < count) S.exhausted = true;
  }
}

function addItem(item, at) {
  if (S.ids.has(item.id)) return;
  S.ids.add(item.id);
  if (at === undefined) S.items.push(item);
  else S.items.splice(at, 0, item);
}

async function refreshStats() {
  S.stats = await api("/api/stats");
  S.decisionsSinceStats = 0;
  renderProgress();
}

// ---------------------------------------------------------------- decisions

function applyResult(result) {
  const item = S.items.find((candidate) => candidate.id === result.crop_id);
  if (item) {
    item.state = result.state_after;
    item.label = result.label_after;
    if (result.changed) item.last_event = { reviewer: result.reviewer, decision: result.decision };
  }
  if (result.changed && S.stats) {
    bump(result.label_before, result.state_before, -1);
    bump(result.label_after, result.state_after, +1);
  }
}

function bump(label, state, delta) {
  // A relabel moves the crop from one class's counts to another's, so totals move too.
  for (const counts of [S.stats.classes[label], S.stats.total]) {
    if (!counts) continue;
    counts[state] = (counts[state] || 0) + delta;
    counts.total += delta;
    counts.done = counts.total - counts.pending;
  }
}

async function decide(decision, label) {
  await fillQueue(1);
  const item = S.items[S.cursor];
  if (!item) return;
  const body = { crop_id: item.id, decision };
  if (label) body.label = label;
  let data;
  try {
    data = await api("/api/decide", body);
  } catch (error) {
    if (error.status === 409 || error.status === 404) dropItem(item);
    throw error;
  }
  clearBanner();
  applyResult(data.result);
  const r = data.result;
  toast(r.changed ? `${r.decision === "reject" ? "✕ rejected" : "✓ " + r.state_after} #${r.crop_id} (${r.label_after})`
                  : `#${r.crop_id} unchanged`);
  S.cursor += 1;
  afterDecisions(1);
  render();
}

async function decidePage() {
  const page = shownPage();
  if (!page.length) {
    if (gridPage().length) toast("no crop is wholly on screen: make the window larger");
    return;
  }
  const reject = page.filter((item) => S.marks.has(item.id)).map((item) => item.id);
  const accept = page.filter((item) => !S.marks.has(item.id)).map((item) => item.id);
  const data = await api("/api/grid", { accept, reject });
  clearBanner();
  for (const result of data.results) applyResult(result);
  for (const id of Object.keys(data.skipped)) {
    const item = S.items.find((candidate) => candidate.id === Number(id));
    if (item) dropItem(item);
  }
  const skipped = Object.keys(data.skipped).length;
  S.cursor = Math.min(S.items.length, S.cursor + page.length - skipped);
  S.marks.clear();
  S.gridSel = 0;
  toast(`page saved: ${accept.length - countSkipped(accept, data.skipped)} accepted, ` +
        `${reject.length - countSkipped(reject, data.skipped)} rejected` +
        (skipped ? `, ${skipped} taken by another reviewer` : ""));
  afterDecisions(page.length);
  await fillQueue(gridSize());
  render();
}

// The crops of this page whose tiles are wholly inside the window, from the first on: Enter decides only
// what the reviewer could see (a prefix, so that the cursor can move past them).
function shownPage() {
  const page = gridPage();
  const tiles = $("#grid").children;
  const shown = [];
  for (const [index, item] of page.entries()) {
    const tile = tiles[index];
    if (!tile || Number(tile.dataset.id) !== item.id || !whollyInWindow(tile)) break;
    shown.push(item);
  }
  return shown;
}

function whollyInWindow(element) {
  const box = element.getBoundingClientRect();
  return box.width > 0 && box.top >= 0 && box.left >= 0 && box.bottom <= window.innerHeight &&
    box.right <= window.innerWidth;
}

function countSkipped(ids, skipped) {
  return ids.filter((id) => String(id) in skipped).length;
}

async function undo() {
  const data = await api("/api/undo", {});
  if (!data.results.length) {
    toast("nothing left to undo");
    return;
  }
  clearBanner();
  for (const result of data.results) applyResult(result);
  let first = S.items.length;
  for (const fresh of data.items) {
    let index = S.items.findIndex((candidate) => candidate.id === fresh.id);
    if (index < 0) {
      addItem(fresh, S.cursor);
      index = S.cursor;
    } else {
      Object.assign(S.items[index], fresh);
    }
    first = Math.min(first, index);
  }
  S.cursor = first;
  if (S.mode === "grid") {
    S.marks = new Set(data.results.filter((r) => r.state_before === "rejected").map((r) => r.crop_id));
    S.gridSel = 0;
  }
  toast(data.results.length === 1 ? `undone: #${data.results[0].crop_id} is ${data.results[0].state_after} again`
                                  : `undone: ${data.results.length} decisions`);
  afterDecisions(data.results.length);
  render();
}

function dropItem(item) {
  const index = S.items.indexOf(item);
  if (index < 0) return;
  S.items.splice(index, 1);
  S.ids.delete(item.id);
  if (index < S.cursor) S.cursor -= 1;
}

function afterDecisions(count) {
  S.decisionsSinceStats += count;
  if (S.decisionsSinceStats >= 25) refreshStats().catch(showError);
  renderProgress();
  fillQueue(S.mode === "grid" ? gridSize() * 2 : AHEAD).then(render);
}

// ---------------------------------------------------------------- keys

const DECISION_KEYS = new Set(["a", "x", "u", "Backspace", "Enter", " "]);

function onKey(event) {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const target = event.target;
  if (target instanceof HTMLInputElement || target instanceof HTMLSelectElement) {
    if (event.key === "Escape" || event.key === "Enter") {
      target.blur();
      event.preventDefault();
    }
    return;
  }
  const help = $("#help");
  if (event.key === "?") {
    help.open ? help.close() : help.showModal();
    event.preventDefault();
    return;
  }
  if (help.open) return;
  const action = S.mode === "grid" ? gridAction(event.key)
    : S.mode === "hand" ? handAction(event.key, event.shiftKey) : singleAction(event.key);
  if (!action) return;
  event.preventDefault();
  if (event.repeat && (DECISION_KEYS.has(event.key) || /^[0-9]$/.test(event.key))) return;
  const generation = S.keyGeneration;
  keyChain = keyChain.then(() => (generation === S.keyGeneration ? action() : undefined)).catch((error) => {
    S.keyGeneration += 1; // keys typed after a failure are dropped: the reviewer sees the error first
    showError(error);
  });
}

function singleAction(key) {
  const digit = /^[1-9]$/.test(key) ? Number(key) : 0;
  if (digit && digit <= S.config.classes.length) return () => decide("relabel", S.config.classes[digit - 1]);
  switch (key) {
    case "a": return () => decide("accept");
    case "x": return () => decide("reject");
    case "u": case "Backspace": return undo;
    case "j": case "ArrowRight": return () => move(+1);
    case "k": case "ArrowLeft": return () => move(-1);
    case "g": return () => setMode("grid");
    case "c": return () => setMode("hand");
    case "r": return reloadQueue;
    default: return null;
  }
}

function handAction(key, shiftKey) {
  if (key === "c" || key === "Escape") return () => setMode("single");
  return hand.action(key, shiftKey);
}

function gridAction(key) {
  const columns = S.gridColumns;
  switch (key) {
    case "ArrowRight": case "l": return () => moveGrid(+1);
    case "ArrowLeft": case "h": return () => moveGrid(-1);
    case "ArrowDown": case "j": return () => moveGrid(+columns);
    case "ArrowUp": case "k": return () => moveGrid(-columns);
    case " ": case "x": return () => toggleMark(S.gridSel);
    case "Enter": return decidePage;
    case "u": case "Backspace": return undo;
    case "g": case "Escape": return () => setMode("single", S.cursor + S.gridSel);
    case "r": return reloadQueue;
    default: return null;
  }
}

async function move(delta) {
  const target = S.cursor + delta;
  if (target < 0) return;
  await fillQueue(delta > 0 ? target - S.cursor + AHEAD : 0);
  S.cursor = Math.min(target, S.items.length);
  render();
}

function moveGrid(delta) {
  const size = gridPage().length;
  if (!size) return;
  S.gridSel = Math.max(0, Math.min(size - 1, S.gridSel + delta));
  renderGrid();
}

function toggleMark(index) {
  const item = gridPage()[index];
  if (!item) return;
  S.marks.has(item.id) ? S.marks.delete(item.id) : S.marks.add(item.id);
  S.gridSel = index;
  renderGrid();
}

async function setMode(mode, cursor) {
  S.mode = mode;
  if (cursor !== undefined) S.cursor = Math.max(0, Math.min(cursor, S.items.length));
  S.marks.clear();
  S.gridSel = 0;
  localStorage.setItem("animexpr.review.mode", mode);
  render();
  if (mode === "grid") {
    await fillQueue(gridSize());
    render();
  }
  if (mode === "hand") {
    await hand.fill();
    hand.show();
    render();
  }
}

async function reloadQueue() {
  if (S.mode === "hand") return hand.reload().then(render);
  S.queueGeneration += 1;
  S.items = S.items.slice(0, S.cursor);
  S.ids = new Set(S.items.map((item) => item.id));
  S.exhausted = false;
  S.marks.clear();
  S.gridSel = 0;
  render();
  await fillQueue(S.mode === "grid" ? gridSize() : AHEAD);
  await refreshStats();
  render();
}

// ---------------------------------------------------------------- rendering

function render() {
  const current = S.items[S.cursor];
  if (S.mode === "grid") fitGrid();
  const empty = S.mode === "grid" ? gridPage().length === 0 : S.mode === "hand" ? !hand.current() : !current;
  const exhausted = S.mode === "hand" ? hand.exhausted : S.exhausted;
  $("#loading").hidden = true;
  $("#empty").hidden = !(empty && exhausted);
  $("#single-view").hidden = S.mode !== "single" || !current;
  $("#grid-view").hidden = S.mode !== "grid" || empty;
  $("#hand-view").hidden = S.mode !== "hand" || empty;
  $("#filters").classList.toggle("unused", S.mode === "hand");
  for (const mode of ["single", "grid", "hand"]) $(`#mode-${mode}`).classList.toggle("active", S.mode === mode);
  renderHint();
  renderRecent();
  if (S.mode === "grid") renderGrid();
  else if (S.mode === "hand") hand.render();
  else if (current) renderSingle(current);
  if (S.mode !== "hand") prefetch();
}

function classIndex(label) {
  return S.config.classes.indexOf(label);
}

function classColor(label) {
  const index = classIndex(label);
  return index < 0 ? "var(--pending)" : `var(--c${index % 6})`;
}

function renderSingle(item) {
  $("#single-view").dataset.cropId = item.id;
  const cropImage = $("#crop-img");
  if (cropImage.getAttribute("src") !== item.image) cropImage.src = item.image;
  $(".crop-pane").className = `crop-pane state-${item.state}`;
  $("#crop-caption").textContent = `crop #${item.id} · ${item.size_px}px file`;
  renderSource(item);
  const badge = $("#label-badge");
  badge.textContent = item.label;
  badge.style.background = classColor(item.label);
  const state = $("#state-badge");
  state.className = item.state;
  state.textContent = item.state + (item.last_event ? ` · ${item.last_event.decision} by ${item.last_event.reviewer}` : "");
  const facts = [
    ["post", linkToPost(item.post.id)],
    ["detector", item.detector],
    ["score", item.score === null ? "—" : item.score.toFixed(3)],
    ["face", `${item.crop_size}px square in the source`],
    ["faces", `${item.detections_count} found, this is #${item.face_index + 1} (${item.faces_policy})`],
    ["cluster", item.duplicate_cluster === null ? "—" : `#${item.duplicate_cluster}`],
    ["rating", item.post.rating || "—"],
  ];
  const list = $("#facts");
  list.replaceChildren();
  for (const [name, value] of facts) {
    const term = document.createElement("dt");
    term.textContent = name;
    const detail = document.createElement("dd");
    if (value instanceof Node) detail.append(value);
    else detail.textContent = value;
    list.append(term, detail);
  }
  const keys = $("#class-keys");
  keys.replaceChildren();
  S.config.classes.forEach((name, index) => {
    const row = document.createElement("li");
    row.className = name === item.label ? "current" : "";
    const key = document.createElement("kbd");
    key.textContent = String(index + 1);
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = classColor(name);
    row.append(key, swatch, document.createTextNode(name));
    keys.append(row);
  });
}

function linkToPost(postId) {
  const link = document.createElement("a");
  link.href = `https://danbooru.donmai.us/posts/${postId}`;
  link.target = "_blank";
  link.rel = "noreferrer noopener";
  link.textContent = `#${postId}`;
  return link;
}

function renderSource(item) {
  const image = $("#source-img");
  const box = $("#face-box");
  const square = $("#crop-square");
  box.hidden = true;
  square.hidden = true;
  if (!item.source) {
    image.removeAttribute("src");
    image.hidden = true;
    $("#source-caption").textContent = "the source image is not in the store";
    return;
  }
  image.hidden = false;
  $("#source-caption").textContent = "source: solid box = detector, dashed = crop";
  const place = () => {
    if (S.items[S.cursor] !== item || !image.naturalWidth) return;
    const width = image.naturalWidth;
    const height = image.naturalHeight;
    const [bx, by, bw, bh] = item.box;
    const [cx, cy, cs] = item.crop_box;
    placeBox(box, bx / width, by / height, bw / width, bh / height);
    placeBox(square, cx / width, cy / height, cs / width, cs / height);
  };
  image.onload = place;
  if (image.getAttribute("src") !== item.source) image.src = item.source;
  else if (image.complete) place();
}

function placeBox(element, left, top, width, height) {
  element.style.left = `${left * 100}%`;
  element.style.top = `${top * 100}%`;
  element.style.width = `${width * 100}%`;
  element.style.height = `${height * 100}%`;
  element.hidden = false;
}

function gridPage() {
  return S.items.slice(S.cursor, S.cursor + gridSize());
}

function gridSize() {
  return S.gridSize || fitGrid();
}

// The grid page holds the whole rows of tiles that fit between the grid's top and the footer (at least one
// row), and no more than --grid-size crops. Measured on the laid-out grid: its CSS decides the columns.
function fitGrid() {
  const view = $("#grid-view");
  const single = $("#single-view");
  const hidden = [view.hidden, single.hidden];
  view.hidden = false; // a hidden grid has no columns to measure, and the single view would push it down
  single.hidden = true;
  const grid = $("#grid");
  const style = getComputedStyle(grid);
  const tracks = style.gridTemplateColumns.split(" ").map(parseFloat).filter((width) => width > 0);
  const columns = Math.max(1, tracks.length);
  const tile = tracks[0] || 128;
  const gap = parseFloat(style.rowGap) || 0;
  const bottom = window.innerHeight - $("footer").offsetHeight - parseFloat(getComputedStyle($("main")).paddingBottom);
  const rowsThatFit = Math.floor((bottom - grid.getBoundingClientRect().top + gap) / (tile + gap));
  [view.hidden, single.hidden] = hidden;
  const limit = S.config.grid_size;
  const rows = Math.max(1, Math.min(rowsThatFit, Math.floor(limit / columns)));
  S.gridColumns = columns;
  S.gridSize = Math.max(1, Math.min(limit, rows * columns));
  return S.gridSize;
}

function renderGrid() {
  const page = gridPage();
  const grid = $("#grid");
  const marked = page.filter((item) => S.marks.has(item.id)).length;
  $("#grid-info").textContent = `${page.length} crops on this page · ${marked} marked for rejection · ` +
    "Enter rejects the marked and accepts the others on screen";
  grid.dataset.pageSize = String(S.gridSize); // read by the tests, which check the fit
  grid.dataset.columns = String(S.gridColumns);
  const tiles = grid.children;
  page.forEach((item, index) => {
    let tile = tiles[index];
    if (!tile) {
      tile = document.createElement("div");
      tile.className = "tile";
      tile.setAttribute("role", "gridcell");
      tile.append(document.createElement("img"), document.createElement("span"), document.createElement("span"));
      tile.children[1].className = "chip";
      tile.children[2].className = "score";
      tile.addEventListener("click", () => toggleMark(Array.prototype.indexOf.call(grid.children, tile)));
      grid.append(tile);
    }
    tile.dataset.id = item.id;
    const image = tile.children[0];
    if (image.getAttribute("src") !== item.image) image.src = item.image;
    image.alt = `crop ${item.id}`;
    tile.children[1].textContent = item.label;
    tile.children[1].style.background = classColor(item.label);
    tile.children[2].textContent = item.score === null ? "—" : item.score.toFixed(2);
    tile.className = "tile" + (S.marks.has(item.id) ? " marked" : "") + (index === S.gridSel ? " cursor" : "") +
      (item.state !== "pending" ? ` state-${item.state}` : "");
    if (index === S.gridSel) tile.scrollIntoView({ block: "nearest" });
  });
  while (tiles.length > page.length) tiles[tiles.length - 1].remove();
}

function renderProgress() {
  const host = $("#progress");
  if (!S.stats) return;
  const pace = S.stats.pace_seconds;
  const rows = Object.entries(S.stats.classes).filter(([name, c]) => c.total > 0 || classIndex(name) >= 0);
  host.replaceChildren();
  for (const [name, counts] of [...rows, ["all", S.stats.total]]) {
    const row = document.createElement("div");
    row.className = "class-progress" + (name === "all" ? " total" : "");
    row.dataset.label = name;
    const title = document.createElement("span");
    title.className = "name";
    if (name !== "all") {
      const index = classIndex(name);
      const key = document.createElement("kbd");
      key.textContent = index >= 0 ? String(index + 1) : "·";
      title.append(key, " ");
    }
    title.append(name);
    const numbers = document.createElement("span");
    numbers.className = "numbers";
    numbers.textContent = `${counts.done}/${counts.total} · ${eta(counts.pending, pace)}`;
    numbers.title = `${counts.accepted} accepted, ${counts.rejected} rejected, ${counts.pending} pending; ` +
      (pace ? `your pace: ${pace.toFixed(1)} s per crop` : "the ETA appears after a few decisions");
    const bar = document.createElement("div");
    bar.className = "bar";
    for (const [cls, value] of [["acc", counts.accepted], ["rej", counts.rejected]]) {
      const part = document.createElement("i");
      part.className = cls;
      part.style.width = `${counts.total ? (100 * value) / counts.total : 0}%`;
      bar.append(part);
    }
    row.append(title, numbers, bar);
    host.append(row);
  }
}

function eta(pending, pace) {
  if (!pending) return "done";
  if (!pace) return "ETA —";
  const minutes = Math.round((pending * pace) / 60);
  if (minutes < 1) return "ETA < 1 min";
  if (minutes < 60) return `ETA ${minutes} min`;
  return `ETA ${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

function renderRecent() {
  const host = $("#recent");
  host.replaceChildren();
  const start = Math.max(0, S.cursor - 10);
  S.items.slice(start, S.cursor).forEach((item, offset) => {
    const button = document.createElement("button");
    button.type = "button";
    button.className = item.state;
    button.title = `#${item.id} ${item.state} (${item.label})`;
    const image = document.createElement("img");
    image.src = item.image;
    image.alt = "";
    button.append(image);
    button.addEventListener("click", () => setMode("single", start + offset));
    host.append(button);
  });
}

function renderHint() {
  const classes = S.config.classes.length;
  const hint = S.mode === "grid"
    ? "<kbd>Space</kbd> mark · <kbd>Enter</kbd> save page · <kbd>u</kbd> undo · arrows move · <kbd>g</kbd> single · <kbd>?</kbd> keys"
    : S.mode === "hand"
    ? "drag draw/move · arrows move · <kbd>+</kbd>/<kbd>-</kbd> size · <kbd>1</kbd>–<kbd>9</kbd> pick · <kbd>Enter</kbd> save · " +
      "<kbd>j</kbd>/<kbd>k</kbd> skip · <kbd>u</kbd> undo · <kbd>c</kbd> single · <kbd>?</kbd> keys"
    : `<kbd>a</kbd> accept · <kbd>x</kbd> reject · <kbd>1</kbd>–<kbd>${classes}</kbd> relabel · <kbd>u</kbd> undo · ` +
      "<kbd>j</kbd>/<kbd>k</kbd> move · <kbd>g</kbd> grid · <kbd>c</kbd> crop by hand · <kbd>?</kbd> keys";
  $("#keys-hint").innerHTML = hint; // static markup, no data from the server
}

function prefetch() {
  const start = S.mode === "grid" ? S.cursor + gridSize() : S.cursor + 1;
  const count = S.mode === "grid" ? gridSize() : PREFETCH;
  for (const item of S.items.slice(start, start + count)) {
    new Image().src = item.image;
    if (item.source && S.mode === "single") new Image().src = item.source;
  }
}

let toastTimer = 0;
function toast(text) {
  const element = $("#toast");
  element.textContent = text;
  element.classList.add("show");
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => element.classList.remove("show"), 1400);
}

function showError(error) {
  const banner = $("#banner");
  banner.textContent = `Not saved: ${error.message}`;
  banner.hidden = false;
  render();
}

function clearBanner() {
  $("#banner").hidden = true;
}

// ---------------------------------------------------------------- filters and start-up

function readFilters() {
  const form = $("#filters");
  const filter = {};
  for (const name of ["label", "state", "min_score", "max_score", "min_size", "cluster", "reviewer"]) {
    const value = form.elements[name].value.trim();
    if (value) filter[name] = value;
  }
  S.filter = filter;
  S.order = form.elements.order.value;
  localStorage.setItem("animexpr.review.filters", JSON.stringify({ ...filter, order: S.order }));
}

function setupFilters() {
  const form = $("#filters");
  for (const name of S.config.classes) form.elements.label.append(new Option(name, name));
  for (const state of S.config.states) form.elements.state.append(new Option(state, state));
  for (const order of S.config.orders) form.elements.order.append(new Option(order, order));
  const saved = JSON.parse(localStorage.getItem("animexpr.review.filters") || "{}");
  for (const [name, value] of Object.entries({ state: "pending", order: S.config.default_order, ...saved })) {
    if (form.elements[name]) form.elements[name].value = value;
  }
  readFilters();
  form.addEventListener("change", (event) => {
    // A focused select would take the review keys for itself (type-ahead).
    if (event.target instanceof HTMLSelectElement) event.target.blur();
    readFilters();
    reloadQueue().catch(showError);
  });
  form.addEventListener("submit", (event) => event.preventDefault());
}

function setupReviewer() {
  const params = new URLSearchParams(location.search);
  const fromUrl = params.get("reviewer");
  if (fromUrl) localStorage.setItem("animexpr.review.reviewer", fromUrl);
  S.reviewer = localStorage.getItem("animexpr.review.reviewer") || "";
  const button = $("#reviewer-name");
  button.addEventListener("click", () => {
    const name = prompt("Reviewer name (letters, digits, _ . @ : + -)", S.reviewer);
    if (name === null) return;
    if (name.trim()) localStorage.setItem("animexpr.review.reviewer", name.trim());
    else localStorage.removeItem("animexpr.review.reviewer");
    location.reload();
  });
}

async function start() {
  setupReviewer();
  S.config = await api("/api/config");
  // With tokens the server says who this is; a name kept in this browser does not count there.
  S.reviewer = S.config.reviewer_from_token ? S.config.reviewer : S.reviewer || S.config.reviewer;
  const button = $("#reviewer-name");
  button.replaceChildren("reviewer ", Object.assign(document.createElement("b"), { textContent: S.reviewer }));
  if (S.config.reviewer_from_token) {
    button.disabled = true;
    button.title = "the name your token belongs to";
  }
  $("#help-classes").replaceChildren(
    Object.assign(document.createElement("kbd"), { textContent: "1" }), "–",
    Object.assign(document.createElement("kbd"), { textContent: String(S.config.classes.length) }),
  );
  setupFilters();
  const savedMode = localStorage.getItem("animexpr.review.mode");
  S.mode = ["grid", "hand"].includes(savedMode) ? savedMode : "single";
  $("#mode-single").addEventListener("click", () => setMode("single"));
  $("#mode-grid").addEventListener("click", () => setMode("grid"));
  $("#mode-hand").addEventListener("click", () => setMode("hand"));
  hand.setupPointer();
  $("#help-button").addEventListener("click", () => $("#help").showModal());
  document.addEventListener("keydown", onKey);
  // A clicked button keeps the focus, and Space or Enter would click it again: give the keys back.
  document.addEventListener("click", (event) => event.target.closest?.("button")?.blur());
  const [history] = await Promise.all([api("/api/history?limit=50"), refreshStats()]);
  for (const item of history.items) addItem(item);
  S.cursor = S.items.length;
  await fillQueue(S.mode === "grid" ? gridSize() : AHEAD);
  if (S.mode === "hand") {
    await hand.fill();
    hand.show();
  }
  render();
  window.addEventListener("resize", onResize);
  performance.mark("review-ready"); // the first crop is on screen (bench/review.py reads this)
  document.body.dataset.ready = "1";
  setInterval(() => refreshStats().catch(showError), STATS_EVERY_MS);
  setInterval(renewLeases, RENEW_EVERY_MS);
}

let resizeTimer = 0;
function onResize() {
  // A new window size makes a new page size: show the rows that fit now, fetching more crops if needed.
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => {
    if (S.mode === "hand") hand.render();
    if (S.mode !== "grid") return;
    S.gridSize = 0;
    S.gridSel = Math.min(S.gridSel, gridSize() - 1);
    fillQueue(gridSize()).then(render);
  }, 100);
}

function renewLeases() {
  const held = S.items.slice(S.cursor).filter((item) => item.state === "pending").map((item) => item.id);
  if (held.length) api("/api/renew", { crop_ids: held.slice(0, 4000) }).catch(showError);
}

start().catch(showError);
