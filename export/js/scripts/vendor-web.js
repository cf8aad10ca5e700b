#!/usr/bin/env node
// Copy what export/web needs into export/web/vendor (git-ignored; run after `npm ci` in export/js):
// onnxruntime-web's ES module build with the WebGPU and wasm back-ends and its wasm files, and this package's src.
import fs from "node:fs";
import path from "node:path";
import {fileURLToPath} from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const pkg = path.resolve(here, "..");
const vendor = path.resolve(pkg, "../web/vendor");
const dist = path.join(pkg, "node_modules/onnxruntime-web/dist");
const ORT_FILES = ["ort.webgpu.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm",
  "ort-wasm-simd-threaded.asyncify.mjs", "ort-wasm-simd-threaded.asyncify.wasm"];
const NODE_ONLY = ["node.js", "cli.js", "journal.js"]; // fs, zlib, process: not for the page

if (!fs.existsSync(dist)) {
  console.error(`vendor-web: ${dist} is missing; run \`npm ci\` in ${pkg} first`);
  process.exit(2);
}
fs.rmSync(vendor, {recursive: true, force: true});
fs.mkdirSync(path.join(vendor, "ort"), {recursive: true});
fs.mkdirSync(path.join(vendor, "vitlab-edge-js"), {recursive: true});
for (const f of ORT_FILES) fs.copyFileSync(path.join(dist, f), path.join(vendor, "ort", f));
for (const f of fs.readdirSync(path.join(pkg, "src"))) {
  if (f.endsWith(".js") && !NODE_ONLY.includes(f)) fs.copyFileSync(path.join(pkg, "src", f), path.join(vendor, "vitlab-edge-js", f));
}
const version = JSON.parse(fs.readFileSync(path.join(dist, "../package.json"), "utf8")).version;
fs.writeFileSync(path.join(vendor, "VERSION"), `onnxruntime-web ${version}\n`);
console.log(`vendor-web: onnxruntime-web ${version} and vitlab-edge-js -> ${vendor}`);
