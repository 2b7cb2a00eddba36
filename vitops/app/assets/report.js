// vitops report: tooltips over the figures and the attention explorer. No network, no library:
// everything this script reads is inside the page (the explorer's maps: see vitops/app/explorer.py).
"use strict";

// ---- tooltips: elements with data-tip, shown on hover and on keyboard focus ----
(function () {
  const tip = document.getElementById("tooltip");
  function show(el) {
    tip.textContent = el.dataset.tip;
    tip.hidden = false;
    const r = el.getBoundingClientRect();
    const t = tip.getBoundingClientRect();
    const left = Math.min(Math.max(8, r.left + r.width / 2 - t.width / 2), window.innerWidth - t.width - 8);
    const below = r.bottom + 8 + t.height < window.innerHeight;
    tip.style.left = `${left + window.scrollX}px`;
    tip.style.top = `${(below ? r.bottom + 6 : r.top - t.height - 6) + window.scrollY}px`;
  }
  const hide = () => { tip.hidden = true; };
  document.addEventListener("pointerover", (e) => {
    const el = e.target.closest("[data-tip]");
    if (el) show(el); else hide();
  });
  document.addEventListener("focusin", (e) => {
    const el = e.target.closest("[data-tip]");
    if (el) show(el); else hide();
  });
  document.addEventListener("keydown", (e) => { if (e.key === "Escape") hide(); });
  // A chart is one stop of the tab order; the arrow keys step through its regions.
  for (const chart of document.querySelectorAll(".chart")) {
    const regions = [...chart.querySelectorAll(".region")];
    if (!regions.length) continue;
    chart.addEventListener("keydown", (e) => {
      const step = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1 }[e.key];
      if (!step) return;
      e.preventDefault();
      const at = regions.indexOf(document.activeElement);
      const next = regions[(at + step + regions.length) % regions.length];
      next.focus();
    });
  }
})();

// ---- the attention explorer ----
(function () {
  const holder = document.getElementById("explorer-data");
  if (!holder) return;
  const data = JSON.parse(holder.textContent);
  const levels = (1 << data.bits) - 1;
  const $ = (id) => document.getElementById(id);
  const ui = { image: $("ex-image"), block: $("ex-block"), head: $("ex-head"), query: $("ex-query"), map: $("ex-map") };
  const state = { image: 0, block: 0, head: -1, query: "patch", map: "attention", fy: 0.5, fx: 0.5 };

  function option(select, value, text) {
    const o = document.createElement("option");
    o.value = value;
    o.textContent = text;
    select.append(o);
  }
  const first = data.models[0];
  first.names.forEach((name, i) => option(ui.image, i, name));
  // Models explore different numbers of blocks (depths differ): the choices are aligned at the
  // last block, choice b being each model's (n - nBlocks + b)-th explored block.
  const nBlocks = Math.max(...data.models.map((m) => m.blocks.length));
  const blockOf = (model, b) => model.blocks.length - nBlocks + b; // -1 and below: none
  for (let b = 0; b < nBlocks; b++) {
    const names = data.models.map((m) => (blockOf(m, b) >= 0 ? `block ${m.blocks[blockOf(m, b)]}` : "-"));
    option(ui.block, b, [...new Set(names)].join(" | "));
  }
  option(ui.head, -1, "mean of the heads");
  const nHeads = Math.max(...data.models.map((m) => m.heads));
  for (let h = 0; h < nHeads; h++) option(ui.head, h, `head ${h + 1}`);
  option(ui.query, "patch", "a patch (click or arrow keys)");
  const prefixNames = [...new Set(data.models.flatMap((m) => m.prefix))];
  for (const name of prefixNames) option(ui.query, name, name);

  // float16 (little-endian) to a number
  function half(view, offset) {
    const h = view.getUint16(offset, true);
    const e = (h >> 10) & 31, f = h & 1023, s = h >> 15 ? -1 : 1;
    if (e === 31) return f ? NaN : s * Infinity;
    return e ? s * 2 ** (e - 15) * (1 + f / 1024) : s * 2 ** -14 * (f / 1024);
  }
  async function inflate(b64) {
    const bin = atob(b64);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  }
  const cache = new Map();
  function maps(m, s) { // model m's maps of image s, inflated once and checked for size
    const key = `${m}/${s}`;
    if (!cache.has(key)) {
      const model = data.models[m];
      const P = model.prefix.length, N = model.grid[0] * model.grid[1], T = P + N;
      const R = model.blocks.length * (model.heads + 1) * T + T;
      const bytes = inflate(model.maps[s]).then((b) => {
        if (b.length !== R * (4 + 2 * P + N)) throw new Error(`explorer maps of ${model.label}: ${b.length} bytes, expected ${R * (4 + 2 * P + N)}`);
        return b;
      });
      bytes.catch(() => cache.delete(key)); // a failed decode is tried again next time
      cache.set(key, bytes);
    }
    return cache.get(key);
  }

  // The values one query row shows: {patches: Float64Array(N), prefix: [P], step} or null.
  function row(m, bytes, block, head, query) {
    const model = data.models[m];
    const P = model.prefix.length, N = model.grid[0] * model.grid[1], T = P + N, H = model.heads;
    const R = model.blocks.length * (H + 1) * T + T;
    let r;
    if (state.map === "rollout") r = model.blocks.length * (H + 1) * T + query;
    else {
      if (block < 0 || head >= H) return null;
      r = (block * (H + 1) + (head < 0 ? H : head)) * T + query;
    }
    // layout (vitops/app/explorer.py, _blob): [maxima float32 (R)][prefix float16 (R, P)][codes uint8 (R, N)]
    const view = new DataView(bytes.buffer);
    const top = view.getFloat32(4 * r, true);
    const prefix = [];
    for (let p = 0; p < P; p++) prefix.push(half(view, 4 * R + 2 * (r * P + p)));
    const codes = bytes.subarray(4 * R + 2 * R * P + r * N, 4 * R + 2 * R * P + (r + 1) * N);
    const patches = Float64Array.from(codes, (c) => (c / levels) * top);
    return { patches, prefix, step: top / levels, top };
  }

  // inferno-like colour ramp
  const RAMP = [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]];
  function colour(v) {
    const x = Math.min(Math.max(v, 0), 1) * (RAMP.length - 1), i = Math.min(Math.floor(x), RAMP.length - 2), f = x - i;
    return RAMP[i].map((c, k) => Math.round(c + f * (RAMP[i + 1][k] - c)));
  }

  const images = new Map();
  function picture(m, s) {
    const key = `${m}/${s}`;
    if (!images.has(key)) {
      const img = new Image();
      img.src = `data:image/jpeg;base64,${data.models[m].images[s]}`;
      images.set(key, img.decode().then(() => img));
    }
    return images.get(key);
  }

  const panels = data.models.map((model, m) => {
    const fig = document.createElement("figure");
    fig.className = "panel";
    const canvas = document.createElement("canvas");
    canvas.width = 336;
    canvas.height = Math.round((336 * model.grid[0]) / model.grid[1]);
    canvas.tabIndex = 0;
    canvas.dataset.model = model.label;
    canvas.setAttribute("role", "img");
    const caption = document.createElement("figcaption");
    const title = document.createElement("b");
    title.textContent = model.label;
    const text = document.createElement("span");
    caption.append(title, document.createElement("br"), text);
    fig.append(canvas, caption);
    $("ex-panels").append(fig);
    const at = (e) => { // inside the border
      const r = canvas.getBoundingClientRect();
      return [
        (e.clientY - r.top - canvas.clientTop) / canvas.clientHeight,
        (e.clientX - r.left - canvas.clientLeft) / canvas.clientWidth,
      ];
    };
    canvas.addEventListener("click", (e) => {
      [state.fy, state.fx] = at(e);
      state.query = "patch";
      ui.query.value = "patch";
      draw();
    });
    canvas.addEventListener("keydown", (e) => {
      const d = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] }[e.key];
      if (!d) return;
      e.preventDefault();
      const [rows, cols] = model.grid;
      const i = Math.min(Math.max(Math.floor(state.fy * rows) + d[0], 0), rows - 1);
      const j = Math.min(Math.max(Math.floor(state.fx * cols) + d[1], 0), cols - 1);
      state.fy = (i + 0.5) / rows;
      state.fx = (j + 0.5) / cols;
      state.query = "patch";
      ui.query.value = "patch";
      draw();
    });
    return { canvas, text };
  });

  let drawing = 0;
  async function draw() {
    const ticket = ++drawing;
    const s = state.image;
    const done = await Promise.all(data.models.map(async (model, m) => [await maps(m, s), await picture(m, s)]));
    if (ticket !== drawing) return; // a newer request superseded this one
    data.models.forEach((model, m) => paint(m, ...done[m]));
    document.getElementById("explorer").dataset.ready = String(drawing);
  }

  function paint(m, bytes, img) {
    const model = data.models[m], { canvas, text } = panels[m];
    const [rows, cols] = model.grid, P = model.prefix.length;
    const ctx = canvas.getContext("2d");
    ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
    let query, where;
    if (state.query === "patch") {
      const i = Math.max(0, Math.min(Math.floor(state.fy * rows), rows - 1));
      const j = Math.max(0, Math.min(Math.floor(state.fx * cols), cols - 1));
      query = P + i * cols + j;
      where = `the patch in row ${i + 1}, column ${j + 1}`;
    } else {
      query = model.prefix.indexOf(state.query);
      where = `the ${state.query}`;
    }
    const block = blockOf(model, Number(state.block)), head = Number(state.head);
    const v = query < 0 ? null : row(m, bytes, block, head, query);
    for (const k of ["query", "block", "head", "values", "prefix", "step", "map"]) delete canvas.dataset[k];
    if (!v) {
      text.textContent = query < 0 ? `no ${state.query} in this model` : "not explored for this model";
      canvas.setAttribute("aria-label", `${model.label}: ${text.textContent}`);
      return;
    }
    const w = canvas.width / cols, h = canvas.height / rows;
    ctx.fillStyle = "rgba(0,0,0,0.3)";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    for (let n = 0; n < v.patches.length; n++) {
      const u = v.top > 0 ? v.patches[n] / v.top : 0;
      const [r, g, b] = colour(u);
      ctx.fillStyle = `rgba(${r},${g},${b},${(0.2 + 0.6 * u).toFixed(3)})`;
      ctx.fillRect((n % cols) * w, Math.floor(n / cols) * h, Math.ceil(w), Math.ceil(h));
    }
    if (query >= P) {
      const n = query - P;
      ctx.strokeStyle = "#00e5ff";
      ctx.lineWidth = 2;
      ctx.strokeRect((n % cols) * w + 1, Math.floor(n / cols) * h + 1, w - 2, h - 2);
    }
    const what = state.map === "rollout"
      ? "rollout through all blocks"
      : `block ${model.blocks[block]}, ${head < 0 ? "mean of the heads" : `head ${head + 1}`}`;
    const prefix = model.prefix.map((name, p) => `${name} ${v.prefix[p].toFixed(3)}`).join(", ");
    text.textContent = `${what}: where ${where} looks. Largest on a patch ${v.top.toFixed(4)} ` +
      `(shown to ${v.step.toExponential(1)})` + (prefix ? `; to ${prefix}` : "") + ".";
    canvas.setAttribute("aria-label", `${model.label}: ${text.textContent}`);
    Object.assign(canvas.dataset, {
      query: String(query), block: String(state.map === "rollout" ? "" : model.blocks[block]),
      head: String(head), map: state.map, step: String(v.step),
      values: JSON.stringify(Array.from(v.patches)), prefix: JSON.stringify(v.prefix),
    });
  }

  ui.image.addEventListener("change", () => { state.image = Number(ui.image.value); draw(); });
  ui.block.addEventListener("change", () => { state.block = Number(ui.block.value); draw(); });
  ui.head.addEventListener("change", () => { state.head = Number(ui.head.value); draw(); });
  ui.query.addEventListener("change", () => { state.query = ui.query.value; draw(); });
  ui.map.addEventListener("change", () => {
    state.map = ui.map.value;
    ui.block.disabled = ui.head.disabled = state.map === "rollout";
    draw();
  });
  ui.block.value = String(nBlocks - 1);
  state.block = nBlocks - 1;
  draw();
})();
