// vitlab-edge-js: the Node twin of `vitlab-edge` (vitlab_edge.cli), with the same records, the same output files
// byte for byte (JSONL, CSV, COCO results JSON) and the same journal, so that a run either CLI started can be resumed
// by the other.

import fs from "node:fs";
import path from "node:path";
import {parseArgs} from "node:util";
import {checkCocoInputs, cocoResultsText} from "./coco.js";
import {atomicWrite, JournalError, readRecords, ResumableRun} from "./journal.js";
import {EmptySourceError, expandInputs, fileInputs, ModelFormatError, openModel} from "./node.js";
import {csvText} from "./pyjson.js";

const PROG = "vitlab-edge-js";
export const USAGE = `usage: ${PROG} predict MODEL IMAGES... --out OUT.jsonl|OUT.csv [--resume] [--topk K] [--batch-size N]
       ${PROG} predict DETECTOR IMAGES... --out RESULTS.json --format coco --annotations GT.json [--resume]
       ${PROG} sample MODEL (--labels L... | --per-class N) --out OUT.u8 [--noise NOISE.f32] [--seed S]
                      [--steps N] [--guidance G] [--method euler|heun]
       ${PROG} info MODEL
       ${PROG} inputs MODEL IMAGES... --out OUT.u8   (the uint8 model inputs, concatenated: for checks)

predict writes --out atomically, complete or not at all; finished records are journaled beside it
(.OUT.partial.jsonl) as they come, and --resume (after Ctrl-C or a kill, of this CLI or of vitlab-edge)
predicts only the inputs neither --out nor the journal answers.`;

/** Options out of range or that do not go together; one line, exit status 2. */
export class UsageError extends Error {
  constructor(message) { super(message); this.name = "UsageError"; }
}

const USER_ERRORS = [UsageError, ModelFormatError, EmptySourceError, JournalError];

/** vitlab_edge.cli.check_arguments for predict. */
function checkPredict(o) {
  const batch = Number(o["batch-size"]);
  if (!(Number.isInteger(batch) && batch >= 1)) throw new UsageError(`--batch-size must be >= 1, got ${o["batch-size"]}`);
  if (o.format !== undefined && o.format !== "coco") throw new UsageError(`--format: invalid choice '${o.format}' (choose from 'coco')`);
  if (o.format === "coco" && (path.extname(o.out) !== ".json" || o.annotations === undefined)) {
    throw new UsageError("--format coco needs --out X.json and --annotations GT.json");
  }
  if (o.format !== "coco" && ![".jsonl", ".csv"].includes(path.extname(o.out))) {
    throw new UsageError(`--out ${o.out}: use a .jsonl or .csv file name`);
  }
}

/** Run the CLI on `argv`; the exit status (0, 1 on a crash, 2 on a user error, 130 after Ctrl-C). */
export async function main(argv) {
  try {
    return await run(argv);
  } catch (e) {
    if (USER_ERRORS.some((cls) => e instanceof cls) || e.code?.startsWith?.("ERR_PARSE_ARGS")) {
      console.error(`${PROG}: error: ${e.message}`);
      if (e instanceof UsageError || e.code?.startsWith?.("ERR_PARSE_ARGS")) console.error(USAGE);
      return 2;
    }
    console.error(e);
    return 1;
  }
}

async function run(argv) {
  const {values: o, positionals: pos} = parseArgs({args: argv, allowPositionals: true, options: {
    out: {type: "string"}, topk: {type: "string", default: "5"}, "batch-size": {type: "string"},
    format: {type: "string"}, annotations: {type: "string"}, resume: {type: "boolean", default: false},
    labels: {type: "string", multiple: true}, "per-class": {type: "string"}, noise: {type: "string"},
    seed: {type: "string", default: "0"}, steps: {type: "string"}, guidance: {type: "string"},
    method: {type: "string"}, providers: {type: "string"}, help: {type: "boolean", short: "h"}}});
  const [command, modelPath, ...images] = pos;
  if (o.help || !command) { console.log(USAGE); return 0; }
  if (!["predict", "sample", "info", "inputs"].includes(command)) throw new UsageError(`unknown command '${command}'`);
  if (!modelPath) throw new UsageError("name a model file");
  const providers = o.providers ? o.providers.split(",") : ["cpu"];
  if (command === "info") {
    const m = await openModel(modelPath, {executionProviders: providers});
    console.log(JSON.stringify({providers: m.providers, ...m.metadata}, null, 2));
    return 0;
  }
  if (!o.out) throw new UsageError("--out is required");
  o["batch-size"] ??= command === "sample" ? "256" : "32";
  if (command === "sample") return sample(modelPath, pos, o, providers);
  if (!images.length) throw new UsageError("name image files, folders or .txt lists");
  if (command === "predict") checkPredict(o);
  const files = expandInputs(images);
  if (command === "inputs") {
    const model = await openEdgeModel(modelPath, providers);
    const parts = [];
    for (const item of fileInputs(files)) parts.push((await model.prepare(item.read())).input);
    atomicWrite(o.out, Buffer.concat(parts.map((p) => Buffer.from(p.buffer, p.byteOffset, p.length))));
    return 0;
  }
  const coco = o.format === "coco";
  const resumable = new ResumableRun(o.out, files, o.resume, coco ? null : readRecords);
  const model = await openEdgeModel(modelPath, providers);
  let doc = null;
  if (coco) {
    if (!model.decoder.fields.includes("boxes")) {
      throw new ModelFormatError(`${modelPath}: --format coco writes detections, this is a ${model.task} model`);
    }
    try {
      try { doc = JSON.parse(fs.readFileSync(o.annotations, "utf8")); } catch (e) {
        throw new Error(`cannot read the annotations ${o.annotations}: ${e.message}`);
      }
      checkCocoInputs(files, doc, model.labels, o.annotations);
    } catch (e) {
      throw new ModelFormatError(e.message);
    }
  }
  return predict(model, files, resumable, o, doc);
}

async function openEdgeModel(file, providers) {
  const model = await openModel(file, {executionProviders: providers});
  if (model.task === "generation") throw new ModelFormatError(`${file}: a generation model takes no images; use sample`);
  return model;
}

/** Journal one record per input not answered yet, then write every input's record to --out in input order. */
async function predict(model, files, resumable, o, doc) {
  const todo = fileInputs(resumable.todo.map((i) => files[i]));
  if (todo.length) {
    let interrupted = false;
    const onInt = () => { interrupted = true; };
    process.on("SIGINT", onInt); // Ctrl-C: stop at the next record; what is journaled is kept
    try {
      const stream = model.stream(todo, {batchSize: Number(o["batch-size"]), topk: Number(o.topk)});
      if (await resumable.recordOrReport(stream, PROG, () => interrupted) === 130) return 130;
    } finally {
      process.off("SIGINT", onInt);
    }
  }
  let n;
  if (o.format === "coco") {
    let res;
    try {
      res = cocoResultsText(resumable.merged(), doc, model.labels, o.annotations);
    } catch (e) {
      throw new ModelFormatError(`COCO results for ${o.annotations}: ${e.message}`);
    }
    atomicWrite(o.out, res.text);
    n = res.count;
  } else if (path.extname(o.out) === ".jsonl") {
    n = resumable.writeJsonl();
  } else {
    const records = [...resumable.merged()];
    atomicWrite(o.out, csvText(records, ["index", "source", ...model.decoder.fields, "error"]));
    n = records.length;
  }
  resumable.finish();
  const earlier = o.resume ? `, ${resumable.earlier} from the earlier output` : "";
  console.log(`${PROG}: ${n} records (${resumable.errors} errors${earlier}) -> ${o.out} [${model.providers.join(", ")}]`);
  return 0;
}

async function sample(modelPath, pos, o, providers) {
  const batchSize = Number(o["batch-size"]);
  if (!(batchSize >= 1)) throw new UsageError(`--batch-size must be >= 1, got ${o["batch-size"]}`);
  const model = await openModel(modelPath, {executionProviders: providers});
  if (model.task !== "generation") throw new ModelFormatError(`${modelPath}: a ${model.task} model, not a generator; use predict`);
  let labels;
  if (o.labels) labels = [...o.labels, ...pos.slice(2)]; // --labels 0 3 Bag: the values after it
  else if (o["per-class"]) labels = Array.from({length: model.numClasses}, (_, c) => Array(Number(o["per-class"])).fill(c)).flat();
  else throw new UsageError("sample needs --labels or --per-class");
  const noise = o.noise ? new Float32Array(new Uint8Array(fs.readFileSync(o.noise)).slice().buffer) : null;
  const images = await model.sample(labels, {noise, seed: Number(o.seed), steps: o.steps ? Number(o.steps) : null,
    guidance: o.guidance != null ? Number(o.guidance) : null, method: o.method ?? null, batchSize});
  atomicWrite(o.out, images);
  const [c, h, w] = model.inputSize;
  console.error(`${PROG}: ${labels.length} images ${h}x${w}x${c} uint8 -> ${o.out} [${model.providers.join(", ")}]`);
  return 0;
}
