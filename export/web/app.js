// The vitlab edge page: an exported model and images picked or dropped here run with onnxruntime-web (WebGPU where
// the browser has it, else wasm) through vitlab-edge-js, which gives the same model input and the same records as
// the Python kit. Nothing leaves the page. window.vitlabPage is the same flow for scripts (the tests use it).

import * as ort from "./vendor/ort/ort.webgpu.min.mjs";
import {applyOrientation, ExportedModel, gaussianNoise, isWebp, withoutWebpExif} from "./vendor/vitlab-edge-js/index.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
ort.env.wasm.wasmPaths = new URL("./vendor/ort/", location.href).href;
// wasm threads need a cross-origin isolated page (COOP/COEP headers); `python -m http.server` sends none -> 1 thread
ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;

const state = {model: null, provider: null, loadMs: 0, modelPickedAt: 0, firstLatencyMs: null, perCallMs: null,
               records: []};

const platform = {
  inflate: async (data) => new Uint8Array(await new Response(
    new Blob([data]).stream().pipeThrough(new DecompressionStream("deflate"))).arrayBuffer()),
  fallback: async (bytes) => { // formats the package does not decode itself (GIF, WebP, BMP, ...): the browser's
    const bmp = await createImageBitmap(new Blob([bytes]), {colorSpaceConversion: "none", premultiplyAlpha: "none",
                                                            imageOrientation: "from-image"});
    const canvas = new OffscreenCanvas(bmp.width, bmp.height), ctx = canvas.getContext("2d");
    ctx.drawImage(bmp, 0, 0);
    const {data} = ctx.getImageData(0, 0, bmp.width, bmp.height);
    return {width: bmp.width, height: bmp.height, channels: 4, data: new Uint8Array(data.buffer)};
  },
};

function status(text, error = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", error);
}

/** Open model bytes: WebGPU first where the browser offers it (unless ?ep=wasm), else wasm. */
async function openModelBytes(bytes, name, providers = null) {
  const tries = providers ? [providers] : (navigator.gpu && params.get("ep") !== "wasm" ? [["webgpu"], ["wasm"]] : [["wasm"]]);
  let lastError = null;
  const t0 = performance.now();
  for (const eps of tries) {
    try {
      if (state.model) await state.model.release();
      state.model = await ExportedModel.open(ort, bytes, {source: name, executionProviders: eps, platform});
      state.provider = eps[0];
      state.loadMs = performance.now() - t0;
      showMeta();
      return state.model.metadata;
    } catch (e) {
      lastError = e;
      if (e.name === "ModelFormatError" || e.constructor?.name === "ModelFormatError") break;
    }
  }
  state.model = null;
  throw lastError;
}

function showMeta() {
  const m = state.model.metadata;
  const [c, h, w] = m.input_size;
  $("meta").textContent = `${m.task} · ${m.backbone ?? ""} · input ${w}×${h}×${c} (${m.resize}, ${m.interpolation}`
    + `${m.resize === "center_crop" ? `, crop ${m.crop_pct}` : ""}) · ${m.labels.length} labels · ${m.precision} · `
    + `provider ${state.provider}${state.provider === "wasm" ? ` (${ort.env.wasm.numThreads} thread${ort.env.wasm.numThreads > 1 ? "s" : ""})` : ""}`
    + ` · loaded in ${state.loadMs.toFixed(0)} ms`;
  const gen = m.task === "generation";
  $("gen-controls").hidden = !gen;
  $("image-drop").hidden = gen;
  if (gen) {
    $("steps").value = m.steps;
    $("guidance").value = m.guidance;
  }
}

/** Predict files [{name, bytes}] one call per image; records as vitlab_edge's, plus the time per call. */
async function predictBytes(items, topk = 5) {
  if (!state.model) throw new Error("pick a model first");
  const records = [];
  const t0 = performance.now();
  for (const [i, it] of items.entries()) {
    const [rec] = await state.model.predict([{source: it.name, bytes: it.bytes}], {batchSize: 1, topk});
    rec.index = i;
    records.push(rec);
    if (state.firstLatencyMs === null && state.modelPickedAt) state.firstLatencyMs = performance.now() - state.modelPickedAt;
  }
  state.perCallMs = (performance.now() - t0) / Math.max(1, items.length);
  state.records = records;
  $("records").textContent = JSON.stringify(records);
  return records;
}

/** Sample a generator: labels (ids or names), optional noise (Float32Array); uint8 [N, H, W, C]. */
async function sampleImages(labels, {noise = null, seed = 0, steps = null, guidance = null} = {}) {
  const [c, h, w] = state.model.inputSize;
  const t0 = performance.now();
  let calls = 0;
  const images = await state.model.sample(labels, {
    noise: noise ?? gaussianNoise(labels.length * c * h * w, seed), steps, guidance,
    onStep: () => { calls++; }});
  state.perCallMs = (performance.now() - t0) / Math.max(1, calls);
  return images;
}

// --- rendering ---------------------------------------------------------------------------------------------------
async function imageCanvas(bytes, maxSide = 420) {
  let bmp = await createImageBitmap(new Blob([bytes]), {imageOrientation: "from-image"});
  if (isWebp(bytes) && withoutWebpExif(bytes).orientation > 1) { // shown as the model saw it (see decode.js)
    const {bytes: plain, orientation} = withoutWebpExif(bytes);
    const px = applyOrientation(await platform.fallback(plain), orientation);
    bmp = await createImageBitmap(new ImageData(new Uint8ClampedArray(px.data.buffer, px.data.byteOffset, px.data.length), px.width, px.height));
  }
  const s = Math.min(1, maxSide / Math.max(bmp.width, bmp.height)), canvas = document.createElement("canvas");
  canvas.width = Math.round(bmp.width * s);
  canvas.height = Math.round(bmp.height * s);
  canvas.getContext("2d").drawImage(bmp, 0, 0, canvas.width, canvas.height);
  return {canvas, scale: s};
}

function bars(entries) {
  const div = document.createElement("div");
  div.className = "bars";
  for (const e of entries) {
    const row = document.createElement("div");
    row.className = "bar";
    row.innerHTML = `<span class="name"></span><span class="track"><span class="fill"></span></span><span class="val"></span>`;
    row.querySelector(".name").textContent = e.label;
    row.querySelector(".fill").style.width = `${(100 * e.prob).toFixed(1)}%`;
    row.querySelector(".val").textContent = `${(100 * e.prob).toFixed(1)} %`;
    div.append(row);
  }
  return div;
}

const COLORS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324"];

async function render(items, records) {
  const out = $("results");
  out.replaceChildren();
  const embeddings = [];
  for (const [i, rec] of records.entries()) {
    const card = document.createElement("div");
    card.className = "card";
    const title = document.createElement("h3");
    title.textContent = rec.source;
    const side = document.createElement("div");
    side.append(title);
    if (rec.error) {
      const p = document.createElement("p");
      p.className = "err";
      p.textContent = rec.error;
      side.append(p);
      card.append(side);
      out.append(card);
      continue;
    }
    let view = null;
    try { view = await imageCanvas(items[i].bytes); } catch { /* the model read it; the browser cannot show it */ }
    if (view) card.append(view.canvas);
    if ("topk" in rec) side.append(bars(rec.topk));
    if ("boxes" in rec) {
      const ctx = view?.canvas.getContext("2d");
      rec.boxes.forEach(([x1, y1, x2, y2], k) => {
        if (!ctx) return;
        const s = view.scale, color = COLORS[rec.class_ids[k] % COLORS.length];
        ctx.strokeStyle = ctx.fillStyle = color;
        ctx.lineWidth = 2;
        ctx.strokeRect(x1 * s, y1 * s, (x2 - x1) * s, (y2 - y1) * s);
        ctx.font = "12px system-ui";
        ctx.fillText(`${rec.labels[k]} ${rec.scores[k].toFixed(2)}`, x1 * s + 2, Math.max(12, y1 * s - 3));
      });
      const p = document.createElement("p");
      p.textContent = `${rec.boxes.length} detection${rec.boxes.length === 1 ? "" : "s"}`;
      side.append(p);
      if (rec.boxes.length) side.append(bars(rec.labels.slice(0, 5).map((l, k) => ({label: l, prob: rec.scores[k]}))));
    }
    if ("embedding" in rec) {
      const e = rec.embedding, norm = Math.hypot(...e);
      const p = document.createElement("p");
      p.innerHTML = `embedding: ${e.length} floats, L2 norm ${norm.toFixed(4)}<br><code class="vec"></code>`;
      p.querySelector("code").textContent = `[${e.slice(0, 8).map((v) => v.toFixed(4)).join(", ")}, …]`;
      side.append(p);
      embeddings.push([rec.source, e]);
    }
    card.append(side);
    out.append(card);
  }
  if (embeddings.length > 1) out.prepend(similarityTable(embeddings.slice(0, 8)));
}

function similarityTable(embs) {
  const table = document.createElement("table");
  table.className = "sim";
  const short = (s) => s.split("/").pop().slice(0, 14);
  table.innerHTML = `<caption>cosine similarity</caption><tr><th></th>${embs.map(([s]) => `<th>${short(s)}</th>`).join("")}</tr>`;
  for (const [s, a] of embs) {
    const tr = document.createElement("tr");
    tr.innerHTML = `<th>${short(s)}</th>` + embs.map(([, b]) => `<td>${a.reduce((acc, v, k) => acc + v * b[k], 0).toFixed(3)}</td>`).join("");
    table.append(tr);
  }
  return table;
}

function renderGrid(images, rows, cols) {
  const [c, h, w] = state.model.inputSize, scale = Math.max(1, Math.ceil(56 / Math.min(h, w))), gap = 2;
  const canvas = document.createElement("canvas");
  canvas.width = cols * (w * scale + gap) + gap;
  canvas.height = rows * (h * scale + gap) + gap;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  const tile = new ImageData(w, h), tmp = new OffscreenCanvas(w, h);
  ctx.imageSmoothingEnabled = false;
  for (let i = 0; i < rows * cols; i++) {
    for (let p = 0; p < h * w; p++) {
      for (let k = 0; k < 3; k++) tile.data[4 * p + k] = images[(i * h * w + p) * c + (c === 1 ? 0 : k)];
      tile.data[4 * p + 3] = 255;
    }
    tmp.getContext("2d").putImageData(tile, 0, 0);
    ctx.drawImage(tmp, gap + (i % cols) * (w * scale + gap), gap + Math.floor(i / cols) * (h * scale + gap), w * scale, h * scale);
  }
  const card = document.createElement("div");
  card.className = "card";
  const side = document.createElement("div");
  side.innerHTML = `<h3>${rows} row(s) × ${cols}: one row per class</h3>`;
  const names = state.model.labels;
  side.append(...names.slice(0, rows).map((n) => Object.assign(document.createElement("div"), {textContent: n})));
  card.append(canvas, side);
  $("results").replaceChildren(card);
}

// --- wiring ------------------------------------------------------------------------------------------------------
let lastItems = [];
const readFiles = (files) => Promise.all([...files].map(async (f) => ({name: f.name, bytes: new Uint8Array(await f.arrayBuffer())})));

async function onModel(file) {
  $("model-name").textContent = file.name;
  status(`Loading ${file.name} …`);
  state.modelPickedAt = performance.now();
  state.firstLatencyMs = null;
  try {
    await openModelBytes(new Uint8Array(await file.arrayBuffer()), file.name);
    status(state.model.task === "generation" ? "Ready: press Sample." : "Ready: pick images.");
    if (lastItems.length && state.model.task !== "generation") await runImages(lastItems);
  } catch (e) {
    status(String(e.message || e), true);
  }
}

async function runImages(items) {
  lastItems = items;
  if (!state.model) { status("Images ready: now pick a model."); return; }
  status(`Predicting ${items.length} image(s) …`);
  try {
    const records = await predictBytes(items);
    await render(items, records);
    status(`${records.length} image(s) · ${state.provider} · ${state.perCallMs.toFixed(1)} ms per image`
      + (state.firstLatencyMs !== null ? ` · first answer ${state.firstLatencyMs.toFixed(0)} ms after picking the model` : ""));
  } catch (e) {
    status(String(e.message || e), true);
  }
}

async function onSample() {
  const per = Number($("per-class").value), n = state.model.numClasses;
  const labels = Array.from({length: n}, (_, c) => Array(per).fill(c)).flat();
  status(`Sampling ${labels.length} images …`);
  try {
    const images = await sampleImages(labels, {seed: Number($("seed").value), steps: Number($("steps").value),
                                               guidance: Number($("guidance").value)});
    renderGrid(images, n, per);
    status(`${labels.length} images · ${state.provider} · ${state.perCallMs.toFixed(1)} ms per denoiser call`);
  } catch (e) {
    status(String(e.message || e), true);
  }
}

function dropZone(el, onFiles) {
  el.addEventListener("dragover", (e) => { e.preventDefault(); el.classList.add("over"); });
  el.addEventListener("dragleave", () => el.classList.remove("over"));
  el.addEventListener("drop", (e) => { e.preventDefault(); el.classList.remove("over"); onFiles(e.dataTransfer.files); });
}

$("model-file").addEventListener("change", (e) => e.target.files[0] && onModel(e.target.files[0]));
$("image-files").addEventListener("change", async (e) => {
  $("image-name").textContent = [...e.target.files].map((f) => f.name).join(", ");
  runImages(await readFiles(e.target.files));
});
dropZone($("model-drop"), (files) => files[0] && onModel(files[0]));
dropZone($("image-drop"), async (files) => runImages(await readFiles(files)));
$("sample-btn").addEventListener("click", onSample);

window.vitlabPage = {ort, state, openModelBytes, predictBytes, sampleImages, renderGrid, render, ready: true};
