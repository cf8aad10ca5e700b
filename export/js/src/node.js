// Node.js entry: onnxruntime-node, the files read with fs, PNG inflated with zlib.

import fs from "node:fs";
import path from "node:path";
import zlib from "node:zlib";
import * as ort from "onnxruntime-node";
import {ExportedModel} from "./model.js";
import {ModelFormatError} from "./metadata.js";

export * from "./index.js";
export {ort};
export {ResumableRun, JournalError, journalPath, journalFiles, readJournal, readRecords, atomicWrite} from "./journal.js";

export const nodePlatform = {inflate: (d) => zlib.inflateSync(d)};

/** Open a vitlab ONNX file with onnxruntime-node: an EdgeModel, or a Sampler for a generation model. `fallback`:
 * a decoder for the formats this package does not decode (GIF, WebP, BMP, ...): bytes -> RGBA pixels, EXIF applied. */
export async function openModel(file, {executionProviders = ["cpu"], sessionOptions = {}, fallback = null} = {}) {
  let bytes;
  try { bytes = new Uint8Array(fs.readFileSync(file)); } catch (e) {
    throw new ModelFormatError(`${file}: ${e.code === "ENOENT" ? "no such model file" : e.message}`);
  }
  return ExportedModel.open(ort, bytes, {source: String(file), executionProviders, sessionOptions,
                                         platform: {...nodePlatform, fallback}});
}

/** Image files as predict() inputs, read when their batch comes ({source, read}); a file that cannot be read
 * gets its reason as the record's error. */
export function fileInputs(files) {
  return files.map((f) => ({source: f, read: () => readFile(f)}));
}

function readFile(f) {
  const fail = (reason) => Object.assign(new Error(reason), {reason});
  let st;
  try { st = fs.statSync(f); } catch (e) {
    throw fail(e.code === "ENOENT" ? `FileNotFoundError: [Errno 2] No such file or directory: '${f}'` : `${e.code}: ${e.message}`);
  }
  if (st.isDirectory()) throw fail("is a directory");
  if (!st.size) throw fail("empty file");
  try { return new Uint8Array(fs.readFileSync(f)); } catch (e) { throw fail(`${e.code}: ${e.message}`); }
}

/** vitlab_edge.imaging.IMAGE_EXTENSIONS: the suffixes a folder scan picks (the same list, so that both CLIs see
 * the same inputs and one can resume the other's run). */
export const IMAGE_EXTENSIONS = [
  ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".gif", ".webp", ".bmp", ".dib", ".tif", ".tiff",
  ".ppm", ".pgm", ".pbm", ".pnm", ".pfm", ".mpo", ".avif", ".avifs", ".jp2", ".j2k", ".j2c", ".jpc", ".jpf", ".jpx",
  ".psd", ".ico", ".cur", ".icns", ".tga", ".icb", ".vda", ".vst", ".qoi", ".pcx", ".dcx", ".sgi", ".rgb", ".rgba",
  ".bw", ".dds", ".blp", ".spider", ".xbm", ".xpm", ".ras", ".msp", ".im", ".pxr", ".fli", ".flc", ".gbr", ".ftc",
  ".ftu", ".fits", ".pcd",
];

/** A folder or list file that stands for no input; the message names it. */
export class EmptySourceError extends Error {
  constructor(message) { super(message); this.name = "EmptySourceError"; }
}

/** str(pathlib.PurePosixPath(p)): repeated slashes and "." components dropped, no trailing slash. */
export function pyPath(p) {
  const s = String(p), root = s.startsWith("//") && !s.startsWith("///") ? "//" : s.startsWith("/") ? "/" : "";
  const parts = s.split("/").filter((x) => x && x !== ".");
  return root + parts.join("/") || ".";
}

const pyJoin = (a, b) => (b.startsWith("/") ? pyPath(b) : pyPath(`${a}/${b}`));

/** vitlab_edge.sources.expand_inputs for folders, .txt/.lst lists and plain files (globs: use the shell's), with
 * the same path strings (a record's source is its key when a run is resumed). */
export function expandInputs(args) {
  const out = [];
  for (const a of args.map(String)) {
    let st = null;
    try { st = fs.statSync(a); } catch { /* a missing file still gets its own error record */ }
    const ext = path.extname(a).toLowerCase();
    if (st?.isDirectory() && !IMAGE_EXTENSIONS.includes(ext)) {
      const found = walk(pyPath(a)).filter((f) => IMAGE_EXTENSIONS.includes(path.extname(f).toLowerCase())).sort(pyStrCmp);
      if (!found.length) throw new EmptySourceError(`folder ${a} holds no image files (searched recursively by extension)`);
      out.push(...found);
    } else if (st?.isFile() && [".txt", ".lst"].includes(ext)) {
      const lines = fs.readFileSync(a, "utf8").split(/\r\n|\r|\n/).map((l) => l.trim()).filter((l) => l && !l.startsWith("#"));
      if (!lines.length) throw new EmptySourceError(`list file ${a} lists no paths`);
      out.push(...lines.map((l) => (path.isAbsolute(l) ? l : pyJoin(path.dirname(a), l))));
    } else out.push(a);
  }
  return out;
}

const pyStrCmp = (a, b) => (a < b ? -1 : a > b ? 1 : 0); // Python sorts str by code point, as JS < does for BMP

function walk(dir) {
  const out = [];
  for (const e of fs.readdirSync(dir, {withFileTypes: true})) {
    const p = pyJoin(dir, e.name);
    if (e.isDirectory()) out.push(...walk(p));
    else if (!(e.isSymbolicLink() && fs.statSync(p, {throwIfNoEntry: false})?.isDirectory())) out.push(p);
  }
  return out;
}
