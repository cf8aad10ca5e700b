// Node.js entry: onnxruntime-node, the files read with fs, PNG inflated with zlib.

import fs from "node:fs";
import path from "node:path";
import zlib from "node:zlib";
import * as ort from "onnxruntime-node";
import {ExportedModel} from "./model.js";

export * from "./index.js";
export {ort};

export const nodePlatform = {inflate: (d) => zlib.inflateSync(d)};

/** Open a vitlab ONNX file with onnxruntime-node: an EdgeModel, or a Sampler for a generation model. */
export async function openModel(file, {executionProviders = ["cpu"], sessionOptions = {}} = {}) {
  const bytes = new Uint8Array(fs.readFileSync(file));
  return ExportedModel.open(ort, bytes, {source: String(file), executionProviders, sessionOptions,
                                         platform: nodePlatform});
}

/** Image files as predict() inputs ({source, bytes}); a file that cannot be read gets its reason instead. */
export function fileInputs(files) {
  return files.map((f) => {
    try {
      const st = fs.statSync(f);
      if (st.isDirectory()) return {source: f, readError: "is a directory", bytes: new Uint8Array(0)};
      if (!st.size) return {source: f, readError: "empty file", bytes: new Uint8Array(0)};
      return {source: f, bytes: new Uint8Array(fs.readFileSync(f))};
    } catch (e) {
      return {source: f, readError: `${e.code === "ENOENT" ? "FileNotFoundError" : e.code}: ${e.message}`, bytes: new Uint8Array(0)};
    }
  });
}

export const IMAGE_EXTENSIONS = [".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".gif", ".webp", ".bmp", ".dib",
  ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm"];

/** vitlab_edge.sources.expand_inputs for folders, .txt/.lst lists and plain files (globs: use the shell's). */
export function expandInputs(args) {
  const out = [];
  for (const a of args) {
    let st = null;
    try { st = fs.statSync(a); } catch { /* a missing file still gets its own error record */ }
    const ext = path.extname(a).toLowerCase();
    if (st?.isDirectory() && !IMAGE_EXTENSIONS.includes(ext)) {
      const found = walk(a).filter((f) => IMAGE_EXTENSIONS.includes(path.extname(f).toLowerCase())).sort(pyStrCmp);
      if (!found.length) throw new Error(`folder ${a} holds no image files (searched recursively by extension)`);
      out.push(...found);
    } else if (st?.isFile() && [".txt", ".lst"].includes(ext)) {
      const lines = fs.readFileSync(a, "utf8").split(/\r?\n/).map((l) => l.trim()).filter((l) => l && !l.startsWith("#"));
      if (!lines.length) throw new Error(`list file ${a} lists no paths`);
      out.push(...lines.map((l) => (path.isAbsolute(l) ? l : path.join(path.dirname(a), l))));
    } else out.push(a);
  }
  return out;
}

const pyStrCmp = (a, b) => (a < b ? -1 : a > b ? 1 : 0); // Python sorts str by code point, as JS < does for BMP

function walk(dir) {
  const out = [];
  for (const e of fs.readdirSync(dir, {withFileTypes: true})) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...walk(p));
    else out.push(p);
  }
  return out;
}
