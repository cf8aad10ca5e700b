#!/usr/bin/env node
// Drive export/web in headless Chromium (Playwright, the system's chromium) through a job list and print what the
// page answered as JSON: the tests compare it with the Python kit, the benchmark reads its timings.
//
//   node scripts/browser-check.js jobs.json > answers.json
//
// jobs.json: {"url": "http://127.0.0.1:PORT/web/?ep=wasm", "chromium": "/usr/bin/chromium", "args": [], "jobs": [
//   {"kind": "predict", "model": "/abs/model.onnx", "images": ["/abs/a.jpg", ...], "screenshot": "/abs/shot.png"},
//   {"kind": "run", "model": "/abs/model.onnx", "inputsUrl": "/data/inputs.u8", "n": 12, "output": "probs",
//    "perImage": false},  (perImage: n calls of batch 1 instead of one call)
//   {"kind": "inputs", "model": "/abs/model.onnx", "urls": ["/data/a.gif", ...]},  (the uint8 model inputs)
//   {"kind": "sample", "model": "/abs/gen.onnx", "labels": [0, 1], "noiseUrl": "/data/noise.f32"}]}
import fs from "node:fs";
import {chromium} from "playwright-core";

const spec = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const browser = await chromium.launch({executablePath: spec.chromium || "/usr/bin/chromium",
                                       args: ["--no-sandbox", "--disable-dev-shm-usage", ...(spec.args ?? [])]});
const answers = [];
try {
  const page = await browser.newPage({viewport: {width: 1000, height: 900}});
  const logs = [];
  page.on("console", (m) => logs.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => logs.push(`pageerror: ${e.message}`));
  for (const job of spec.jobs) {
    await page.goto(spec.url);
    await page.waitForFunction(() => window.vitlabPage?.ready, null, {timeout: 30000});
    const t0 = Date.now();
    await page.setInputFiles("#model-file", job.model); // the user's path: pick the model file
    await page.waitForFunction(() => /Ready|error|not/i.test(document.getElementById("status").textContent)
      && !/Loading/.test(document.getElementById("status").textContent), null, {timeout: 60000});
    const opened = await page.evaluate(() => ({status: document.getElementById("status").textContent,
      provider: window.vitlabPage.state.provider, loadMs: window.vitlabPage.state.loadMs,
      numThreads: window.vitlabPage.ort.env.wasm.numThreads, crossOriginIsolated: self.crossOriginIsolated,
      webgpu: !!navigator.gpu, userAgent: navigator.userAgent}));
    const answer = {kind: job.kind, model: job.model, ...opened};
    if (job.kind === "predict") {
      await page.setInputFiles("#image-files", job.images); // ... then pick the images
      await page.waitForFunction((n) => JSON.parse(document.getElementById("records").textContent).length === n
        && /image\(s\) ·|error/.test(document.getElementById("status").textContent), job.images.length, {timeout: 120000});
      answer.records = JSON.parse(await page.textContent("#records"));
      answer.status = await page.textContent("#status");
      const st = await page.evaluate(() => ({perCallMs: window.vitlabPage.state.perCallMs,
                                             firstLatencyMs: window.vitlabPage.state.firstLatencyMs}));
      Object.assign(answer, st, {wallMs: Date.now() - t0});
      if (job.screenshot) await page.screenshot({path: job.screenshot, fullPage: false});
    } else if (job.kind === "run") { // the model on uint8 tensors the caller made: identical inputs
      if (job.n) answer.values = await page.evaluate(async ({url, n, output, perImage}) => {
        const bytes = new Uint8Array(await (await fetch(url)).arrayBuffer()), m = window.vitlabPage.state.model;
        if (!perImage) return Array.from((await m.run(bytes, n, [output]))[output].data, Number);
        const per = bytes.length / n, values = []; // one call per input, as the page predicts
        for (let i = 0; i < n; i++) values.push(...Array.from((await m.run(bytes.slice(i * per, (i + 1) * per), 1, [output]))[output].data, Number));
        return values;
      }, {url: job.inputsUrl, n: job.n, output: job.output, perImage: !!job.perImage});
      if (job.repeat) { // timing: batch-1 calls on the first input
        answer.runMs = await page.evaluate(async ({repeat}) => {
          const m = window.vitlabPage.state.model, [c, h, w] = m.inputSize, x = new Uint8Array(c * h * w).fill(128);
          await m.run(x, 1);
          const t = performance.now();
          for (let i = 0; i < repeat; i++) await m.run(x, 1);
          return (performance.now() - t) / repeat;
        }, {repeat: job.repeat});
      }
    } else if (job.kind === "inputs") { // the model inputs the page makes of image files (fetched by URL)
      answer.inputs = await page.evaluate(async ({urls}) => {
        const out = [];
        for (const url of urls) {
          const bytes = new Uint8Array(await (await fetch(url)).arrayBuffer());
          try { out.push(Array.from((await window.vitlabPage.state.model.prepare(bytes)).input)); } catch (e) {
            out.push(String(e.message || e));
          }
        }
        return out;
      }, {urls: job.urls});
    } else if (job.kind === "sample") {
      const res = await page.evaluate(async ({labels, url}) => {
        const noise = new Float32Array(await (await fetch(url)).arrayBuffer());
        const images = await window.vitlabPage.sampleImages(labels, {noise});
        const [c, h, w] = window.vitlabPage.state.model.inputSize;
        window.vitlabPage.renderGrid(images, 1, labels.length);
        return {images: Array.from(images), perCallMs: window.vitlabPage.state.perCallMs, shape: [labels.length, h, w, c]};
      }, {labels: job.labels, url: job.noiseUrl});
      Object.assign(answer, res);
      if (job.screenshot) await page.screenshot({path: job.screenshot});
    }
    answers.push(answer);
  }
  process.stdout.write(JSON.stringify({answers, logs}));
} finally {
  await browser.close();
}
