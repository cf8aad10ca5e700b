#!/usr/bin/env node
// vitlab-edge-js: the Node twin of `vitlab-edge` (the Python edge kit's CLI), same records.
//
//   vitlab-edge-js predict model.onnx photos/ more.jpg list.txt --out preds.jsonl [--topk 5] [--batch-size 32]
//   vitlab-edge-js sample generator.onnx --labels 0 3 Bag --noise noise.f32 --out images.u8 [--steps N]
//   vitlab-edge-js info model.onnx
//   vitlab-edge-js inputs model.onnx images... --out inputs.u8   (the uint8 model inputs, concatenated: for checks)

import fs from "node:fs";
import path from "node:path";
import {parseArgs} from "node:util";
import {expandInputs, fileInputs, openModel, ModelFormatError} from "../src/node.js";

const USAGE = `usage: vitlab-edge-js predict MODEL IMAGES... --out OUT.jsonl [--topk K] [--batch-size N]
       vitlab-edge-js sample MODEL (--labels L... | --per-class N) --out OUT.u8 [--noise NOISE.f32] [--seed S]
                      [--steps N] [--guidance G] [--method euler|heun]
       vitlab-edge-js info MODEL
       vitlab-edge-js inputs MODEL IMAGES... --out OUT.u8`;

class UsageError extends Error {}

function writeAtomic(file, data) {
  const tmp = path.join(path.dirname(path.resolve(file)), `.${path.basename(file)}.${process.pid}.tmp`);
  fs.mkdirSync(path.dirname(path.resolve(file)), {recursive: true});
  fs.writeFileSync(tmp, data);
  fs.renameSync(tmp, file);
}

async function main(argv) {
  const {values: o, positionals: pos} = parseArgs({args: argv, allowPositionals: true, options: {
    out: {type: "string"}, topk: {type: "string", default: "5"}, "batch-size": {type: "string", default: "32"},
    labels: {type: "string", multiple: true}, "per-class": {type: "string"}, noise: {type: "string"},
    seed: {type: "string", default: "0"}, steps: {type: "string"}, guidance: {type: "string"},
    method: {type: "string"}, providers: {type: "string"}, help: {type: "boolean", short: "h"}}});
  const [command, modelPath, ...images] = pos;
  if (o.help || !command) { console.log(USAGE); return 0; }
  if (!modelPath) throw new UsageError("name a model file");
  const providers = o.providers ? o.providers.split(",") : ["cpu"];
  const batchSize = Number(o["batch-size"]), topk = Number(o.topk);
  if (!(batchSize >= 1)) throw new UsageError(`--batch-size must be >= 1, got ${o["batch-size"]}`);
  if (command === "info") {
    const m = await openModel(modelPath, {executionProviders: providers});
    console.log(JSON.stringify({providers: m.providers, ...m.metadata}, null, 2));
    return 0;
  }
  if (!o.out) throw new UsageError("--out is required");
  if (command === "predict" || command === "inputs") {
    if (!images.length) throw new UsageError("name image files, folders or .txt lists");
    if (command === "predict" && path.extname(o.out) !== ".jsonl") throw new UsageError(`--out ${o.out}: use a .jsonl file name`);
    const files = expandInputs(images);
    const model = await openModel(modelPath, {executionProviders: providers});
    if (model.task === "generation") throw new ModelFormatError(`${modelPath}: a generation model takes no images; use sample`);
    if (command === "inputs") {
      const parts = [];
      for (const item of fileInputs(files)) parts.push((await model.prepare(item.bytes)).input);
      writeAtomic(o.out, Buffer.concat(parts.map((p) => Buffer.from(p.buffer, p.byteOffset, p.length))));
      return 0;
    }
    const t0 = performance.now();
    const records = await model.predict(fileInputs(files), {batchSize, topk});
    writeAtomic(o.out, records.map((r) => JSON.stringify(r) + "\n").join(""));
    const errors = records.filter((r) => r.error !== null).length;
    console.error(`vitlab-edge-js: ${records.length} records (${errors} errors) -> ${o.out} [${model.providers.join(", ")}] `
      + `${((performance.now() - t0) / 1000).toFixed(2)} s`);
    return 0;
  }
  if (command === "sample") {
    const model = await openModel(modelPath, {executionProviders: providers});
    if (model.task !== "generation") throw new ModelFormatError(`${modelPath}: a ${model.task} model, not a generator; use predict`);
    let labels;
    if (o.labels) labels = [...o.labels, ...pos.slice(2)]; // --labels 0 3 Bag: the values after it
    else if (o["per-class"]) labels = Array.from({length: model.numClasses}, (_, c) => Array(Number(o["per-class"])).fill(c)).flat();
    else throw new UsageError("sample needs --labels or --per-class");
    const noise = o.noise ? new Float32Array(new Uint8Array(fs.readFileSync(o.noise)).slice().buffer) : null;
    const images = await model.sample(labels, {noise, seed: Number(o.seed), steps: o.steps ? Number(o.steps) : null,
      guidance: o.guidance != null ? Number(o.guidance) : null, method: o.method ?? null, batchSize});
    writeAtomic(o.out, images);
    const [c, h, w] = model.inputSize;
    console.error(`vitlab-edge-js: ${labels.length} images ${h}x${w}x${c} uint8 -> ${o.out} [${model.providers.join(", ")}]`);
    return 0;
  }
  throw new UsageError(`unknown command '${command}'`);
}

main(process.argv.slice(2)).then((code) => { process.exitCode = code; }, (e) => {
  if (e instanceof UsageError || e instanceof ModelFormatError || e.code === "ERR_PARSE_ARGS_UNKNOWN_OPTION") {
    console.error(`vitlab-edge-js: error: ${e.message}`);
    if (e instanceof UsageError) console.error(USAGE);
    process.exitCode = 2;
  } else {
    console.error(e);
    process.exitCode = 1;
  }
});
