// Records from a model's outputs: the same keys and values as vitlab_edge.records (DECODERS). A task's decoder
// names the graph outputs it reads and turns one batch row of them into the record's fields.

import {boxesToOriginal} from "./imaging.js";

const name = (labels, k) => (k >= 0 && k < labels.length ? labels[k] : String(k));

/** Python's round(x, 3) for a double: the nearest 3-decimal value, ties (exact in binary) to even. */
export function round3(x) {
  const x16 = x * 16;
  if (Number.isInteger(x16)) { // only multiples of 1/16 can be exact ties at 3 decimals
    const y = x * 1000, f = Math.floor(y);
    if (y - f === 0.5) return (f % 2 === 0 ? f : f + 1) / 1000;
  }
  return Number(x.toFixed(3));
}

/** vitlab_edge.records.topk_record: top-1 fields and `topk` from one row of probabilities (stable order). */
export function topkRecord(probs, labels, k) {
  const order = Array.from(probs.keys()).sort((a, b) => probs[b] - probs[a] || a - b).slice(0, Math.max(1, k));
  const top = order.map((j) => ({label: name(labels, j), class_id: j, prob: probs[j]}));
  return {label: top[0].label, class_id: top[0].class_id, prob: top[0].prob, topk: top};
}

/** vitlab_edge.records.detection_record: one image's padded detections -> its fields, boxes in source pixels. */
export function detectionRecord(boxes, scores, labels, numDets, ctx) {
  const k = Math.max(0, Math.min(numDets, scores.length));
  let bx = [];
  for (let i = 0; i < k; i++) bx.push(Array.from(boxes.subarray(4 * i, 4 * i + 4)));
  if (ctx.srcHW && ctx.inputHW) bx = boxesToOriginal(bx, ctx.srcHW, ctx.inputHW);
  const ids = Array.from(labels.subarray(0, k), Number);
  return {boxes: bx.map((b) => b.map(round3)), scores: Array.from(scores.subarray(0, k)),
          labels: ids.map((c) => name(ctx.labels, c)), class_ids: ids};
}

const row = (t, r) => { const n = t.dims.slice(1).reduce((a, b) => a * b, 1); return t.data.subarray(r * n, (r + 1) * n); };

/**
 * One task's decoding: `outputs` (graph outputs read), `fields` (record keys), `empty()` and
 * `decode(outputs, row, ctx)` with outputs {name: ort.Tensor} and ctx {labels, topk, srcHW, inputHW}.
 */
export const DECODERS = {
  classification: {
    task: "classification", outputs: ["probs"], fields: ["label", "class_id", "prob", "topk"],
    empty: () => ({label: null, class_id: null, prob: null, topk: []}),
    decode: (o, r, ctx) => topkRecord(row(o.probs, r), ctx.labels, ctx.topk),
  },
  detection: {
    task: "detection", outputs: ["boxes", "scores", "labels", "num_dets"],
    fields: ["boxes", "scores", "labels", "class_ids"],
    empty: () => ({boxes: [], scores: [], labels: [], class_ids: []}),
    decode: (o, r, ctx) => detectionRecord(row(o.boxes, r), row(o.scores, r), row(o.labels, r),
      Number(o.num_dets.data[r]), ctx),
  },
  embedding: {
    task: "embedding", outputs: ["embedding"], fields: ["embedding"], empty: () => ({embedding: []}),
    decode: (o, r) => ({embedding: Array.from(row(o.embedding, r))}),
  },
};

/** The record decoder of `task` (null: classification); an unknown task throws naming the known ones. */
export function decoderFor(task) {
  const t = !task ? "classification" : task === "detect" ? "detection" : task;
  if (!(t in DECODERS)) throw new Error(`no record decoder for task '${t}'; this version knows ${Object.keys(DECODERS).join(", ")}`);
  return DECODERS[t];
}
