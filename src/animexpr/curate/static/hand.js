// Hand mode of the review page: posts the detector missed, the original picture scaled to the window, and
// a square the reviewer draws, moves and resizes; Enter cuts the crop and accepts it at once.
// Every square is in the original's pixels: what the page shows is exactly the crop that is cut.

const $ = (selector) => document.querySelector(selector);
const AHEAD = 5; // posts fetched ahead of the one on screen
const GROW = 1.1; // + and - resize by this factor around the centre

export class HandMode {
  // shared: { api, toast, showError, clearBanner, refreshStats, applyResult, render }
  constructor(shared) {
    this.shared = shared;
    this.posts = [];
    this.cursor = 0;
    this.exhausted = false;
    this.minSide = 1;
    this.cropPx = 0;
    this.square = null; // [x, y, side] in the original's pixels
    this.candidates = null; // the server's answer for the post on screen
    this.touched = false; // the reviewer moved the square: candidates arriving late leave it alone
    this.drag = null;
    this.generation = 0;
  }

  current() {
    return this.posts[this.cursor];
  }

  // ------------------------------------------------------------ queue

  async fill() {
    while (!this.exhausted && this.posts.length < this.cursor + AHEAD) {
      const exclude = this.posts.map((post) => post.id).slice(-4000);
      const count = AHEAD * 2;
      const data = await this.shared.api("/api/manual/next", { count, exclude });
      this.minSide = data.min_side;
      this.cropPx = data.crop_px;
      for (const post of data.posts) this.posts.push(post);
      if (data.posts.length < count) this.exhausted = true;
    }
  }

  async reload() {
    this.posts = this.posts.slice(0, this.cursor);
    this.exhausted = false;
    await this.fill();
    this.show();
  }

  // ------------------------------------------------------------ showing a post

  show() {
    const post = this.current();
    this.generation += 1;
    this.square = null;
    this.candidates = null;
    this.touched = false;
    if (!post) return;
    const image = $("#hand-img");
    const generation = this.generation;
    image.onload = () => {
      if (generation !== this.generation) return;
      if (!this.square) this.square = this.defaultSquare();
      this.render();
    };
    if (image.getAttribute("src") !== post.original) image.src = post.original;
    else if (image.complete && image.naturalWidth) image.onload();
    this.shared.api(post.candidates).then((data) => {
      if (generation !== this.generation) return;
      this.candidates = data;
      this.minSide = data.min_side;
      this.cropPx = data.crop_px;
      if (!this.touched && data.candidates.length) this.square = this.fit(data.candidates[0].square);
      else if (this.square) this.square = this.fit(this.square);
      this.render();
    }).catch(this.shared.showError);
    for (const next of this.posts.slice(this.cursor + 1, this.cursor + 3)) new Image().src = next.original;
  }

  size() {
    const image = $("#hand-img");
    return [image.naturalWidth, image.naturalHeight];
  }

  defaultSquare() {
    const [width, height] = this.size();
    const side = Math.max(this.minSide, Math.round(Math.min(width, height) / 2));
    return this.fit([(width - side) / 2, (height - side) / 2, side]);
  }

  // The square made whole pixels, at least minSide, and moved (never shrunk but to the picture) inside.
  fit([x, y, side]) {
    const [width, height] = this.size();
    const s = Math.max(1, Math.min(Math.round(Math.max(side, this.minSide)), width, height));
    return [clamp(Math.round(x), 0, width - s), clamp(Math.round(y), 0, height - s), s];
  }

  // ------------------------------------------------------------ keys

  action(key, shiftKey) {
    const digit = /^[1-9]$/.test(key) ? Number(key) : 0;
    if (digit) return () => this.pick(digit - 1);
    const step = () => (shiftKey ? 1 : Math.max(1, Math.round(this.square[2] / 20)));
    switch (key) {
      case "ArrowLeft": return () => this.nudge(-step(), 0);
      case "ArrowRight": return () => this.nudge(step(), 0);
      case "ArrowUp": return () => this.nudge(0, -step());
      case "ArrowDown": return () => this.nudge(0, step());
      case "+": case "=": return () => this.resize(GROW);
      case "-": case "_": return () => this.resize(1 / GROW);
      case "Enter": return () => this.save();
      case "j": return () => this.move(+1);
      case "k": return () => this.move(-1);
      case "u": case "Backspace": return () => this.undo();
      case "r": return () => this.reload();
      default: return null;
    }
  }

  nudge(dx, dy) {
    if (!this.square) return;
    const [x, y, side] = this.square;
    this.set([x + dx, y + dy, side]);
  }

  resize(factor) {
    if (!this.square) return;
    const [x, y, side] = this.square;
    const grown = factor > 1 ? Math.max(side + 1, Math.round(side * factor)) : Math.min(side - 1, Math.round(side * factor));
    this.set([x + (side - grown) / 2, y + (side - grown) / 2, grown]);
  }

  pick(index) {
    const candidate = this.candidates?.candidates[index];
    if (candidate) this.set(candidate.square);
  }

  set(square) {
    this.square = this.fit(square);
    this.touched = true;
    this.render();
  }

  move(delta) {
    const target = this.cursor + delta;
    if (target < 0) return;
    return this.fill().then(() => {
      this.cursor = Math.min(target, this.posts.length);
      this.show();
      this.shared.render();
    });
  }

  async save() {
    const post = this.current();
    if (!post || !this.square) return;
    const [x, y, size] = this.square;
    const data = await this.shared.api("/api/manual/crop", { post_id: post.id, x, y, size });
    this.shared.clearBanner();
    post.saved = data.crop_id;
    const replaced = data.replaced.length ? `, replaces #${data.replaced.join(", #")}` : "";
    this.shared.toast(data.changed ? `✓ hand crop #${data.crop_id} of post #${post.id} (${post.label})${replaced}`
                                   : `#${data.crop_id} was accepted already`);
    this.shared.refreshStats().catch(this.shared.showError);
    await this.move(+1);
  }

  async undo() {
    const data = await this.shared.api("/api/undo", {});
    if (!data.results.length) {
      this.shared.toast("nothing left to undo");
      return;
    }
    this.shared.clearBanner();
    for (const result of data.results) this.shared.applyResult(result);
    // A hand crop taken back puts its post back on screen, to crop it again or skip it.
    const undone = data.items.find((item) => item.detector === "manual" && item.state === "rejected");
    const index = undone ? this.posts.findIndex((post) => post.id === undone.post.id) : -1;
    if (index >= 0) {
      this.cursor = index;
      this.show();
    }
    this.shared.toast(undone ? `undone: hand crop #${undone.id} of post #${undone.post.id} is out again`
                             : `undone: ${data.results.length} decisions`);
    this.shared.refreshStats().catch(this.shared.showError);
    this.shared.render();
  }

  // ------------------------------------------------------------ mouse

  setupPointer() {
    const frame = $("#hand-frame");
    frame.addEventListener("pointerdown", (event) => this.pointerDown(event));
    frame.addEventListener("pointermove", (event) => this.pointerMove(event));
    frame.addEventListener("pointerup", (event) => this.pointerUp(event));
    frame.addEventListener("pointercancel", () => { this.drag = null; });
    $("#hand-candidates").addEventListener("click", (event) => {
      const box = event.target.closest(".candidate");
      if (box) this.pick(Number(box.dataset.index));
    });
  }

  // The pointer in the original's pixels.
  point(event) {
    const rect = $("#hand-img").getBoundingClientRect();
    const [width, height] = this.size();
    return [(event.clientX - rect.left) * (width / rect.width), (event.clientY - rect.top) * (height / rect.height)];
  }

  pointerDown(event) {
    if (!this.square || event.button !== 0) return;
    if (event.target.closest(".candidate")) return; // a click picks the candidate
    event.preventDefault();
    $("#hand-frame").setPointerCapture(event.pointerId);
    const [px, py] = this.point(event);
    const [x, y, side] = this.square;
    if (event.target.classList.contains("handle")) this.drag = { kind: "resize", x, y };
    else if (px >= x && px <= x + side && py >= y && py <= y + side) this.drag = { kind: "move", dx: px - x, dy: py - y };
    else this.drag = { kind: "draw", ax: px, ay: py, moved: false };
  }

  pointerMove(event) {
    if (!this.drag) return;
    const [px, py] = this.point(event);
    const drag = this.drag;
    if (drag.kind === "move") {
      this.set([px - drag.dx, py - drag.dy, this.square[2]]);
    } else if (drag.kind === "resize") {
      this.set([drag.x, drag.y, Math.max(px - drag.x, py - drag.y)]);
    } else {
      const side = Math.max(Math.abs(px - drag.ax), Math.abs(py - drag.ay));
      drag.moved = drag.moved || side > 2;
      if (!drag.moved) return;
      const x = px < drag.ax ? drag.ax - side : drag.ax;
      const y = py < drag.ay ? drag.ay - side : drag.ay;
      this.set([x, y, side]);
    }
  }

  pointerUp(event) {
    const drag = this.drag;
    this.drag = null;
    if (drag?.kind === "draw" && !drag.moved) {
      // A click without a drag centres the square there.
      const [px, py] = this.point(event);
      const side = this.square[2];
      this.set([px - side / 2, py - side / 2, side]);
    }
  }

  // ------------------------------------------------------------ rendering

  render() {
    const post = this.current();
    const view = $("#hand-view");
    if (!post) return;
    view.dataset.postId = post.id;
    const [width, height] = this.size();
    if (width) fitToWindow($("#hand-img"), width, height);
    const square = $("#hand-square");
    if (this.square && width) {
      const [x, y, side] = this.square;
      place(square, x / width, y / height, side / width, side / height);
      square.dataset.square = this.square.join(",");
    } else {
      square.hidden = true;
    }
    this.renderCandidates(width, height);
    this.renderFacts(post);
  }

  renderCandidates(width, height) {
    const host = $("#hand-candidates");
    host.replaceChildren();
    if (!this.candidates || !width) return;
    this.candidates.candidates.forEach((candidate, index) => {
      const [x, y, side] = candidate.square;
      const box = document.createElement("div");
      box.className = "candidate";
      box.dataset.index = String(index);
      box.title = `${index + 1}: ${candidate.source}` + (candidate.score === null ? "" : ` (score ${candidate.score})`);
      const key = document.createElement("kbd");
      key.textContent = index < 9 ? String(index + 1) : "·";
      box.append(key);
      host.append(box);
      place(box, x / width, y / height, side / width, side / height);
    });
  }

  renderFacts(post) {
    const label = $("#hand-label");
    label.textContent = post.label;
    label.style.background = this.shared.classColor(post.label);
    const [width, height] = this.size();
    const found = this.candidates ? this.candidates.candidates.length : "…";
    const facts = [
      ["post", `#${post.id}`],
      ["why", post.reason.replaceAll("_", " ") + (post.largest_side ? ` (largest ${post.largest_side} px)` : "")],
      ["detail", post.detail || "—"],
      ["picture", width ? `${width} × ${height} px` : "…"],
      ["square", this.square ? `x ${this.square[0]}, y ${this.square[1]}, ${this.square[2]} px` : "…"],
      ["crop", this.cropPx ? `${this.cropPx} px, square at least ${this.minSide} px` : "…"],
      ["boxes", `${found} to pick (number keys)`],
      ["saved", post.saved ? `hand crop #${post.saved}` : "—"],
    ];
    const list = $("#hand-facts");
    list.replaceChildren();
    for (const [name, value] of facts) {
      const term = document.createElement("dt");
      term.textContent = name;
      const detail = document.createElement("dd");
      detail.textContent = value;
      list.append(term, detail);
    }
    const note = this.candidates?.note;
    $("#hand-note").textContent = note || "";
  }
}

// The picture scaled (up or down) to fill the room between its top and the footer, and its column's width.
function fitToWindow(image, width, height) {
  const top = $("#hand-frame").getBoundingClientRect().top;
  const roomHeight = Math.max(120, window.innerHeight - top - $("footer").offsetHeight - 36);
  const roomWidth = $(".hand-pane").clientWidth;
  const scale = Math.min(roomWidth / width, roomHeight / height);
  image.style.width = `${Math.floor(width * scale)}px`;
}

function clamp(value, low, high) {
  return Math.min(Math.max(value, low), high);
}

function place(element, left, top, width, height) {
  element.style.left = `${left * 100}%`;
  element.style.top = `${top * 100}%`;
  element.style.width = `${width * 100}%`;
  element.style.height = `${height * 100}%`;
  element.hidden = false;
}
