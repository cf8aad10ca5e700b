// The `vitlab` metadata document of an exported model (vitlab_edge/metadata.py): read from the ONNX file's
// ModelProto.metadata_props with a minimal protobuf walk (onnxruntime's JavaScript API does not expose custom
// metadata), parsed with JSON.parse and validated with the same rules and messages as the Python kit.

export const METADATA_KEY = "vitlab";
export const FORMAT = 1;
export const REQUIRED = ["format", "task", "labels", "input_size", "mean", "std", "interpolation", "resize",
  "crop_pct", "inputs", "outputs", "precision"];
export const TASK_KEYS = {
  classification: [], detection: ["score_thresh", "nms_thresh", "topk", "max_det", "class_agnostic"],
  generation: ["objective", "sampler", "steps", "guidance", "null_class", "pixel_scale"],
  embedding: ["embedding_dim"],
};
export const TASK_OUTPUTS = {classification: ["probs", "logits"], detection: ["boxes", "scores", "labels", "num_dets"],
  generation: ["v"], embedding: ["embedding"]};
export const GENERATION_INPUTS = ["x", "t", "y", "guidance"];

/** A file that is not a usable vitlab ONNX model; the message names the file and what to do. */
export class ModelFormatError extends Error {}

/** ModelProto.metadata_props of an ONNX file's bytes as {key: value}; the graph is skipped, not parsed. */
export function onnxMetadataProps(bytes) {
  const d = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  const out = {};
  const dec = new TextDecoder();
  let pos = 0;
  const varint = () => {
    let v = 0, mul = 1, b;
    do {
      if (pos >= d.length) throw new Error("truncated protobuf");
      b = d[pos++];
      v += (b & 0x7f) * mul;
      mul *= 128;
    } while (b & 0x80);
    return v;
  };
  const fields = (end, visit) => {
    while (pos < end) {
      const key = varint(), field = Math.floor(key / 8), wire = key & 7;
      if (wire === 0) varint();
      else if (wire === 1) pos += 8;
      else if (wire === 5) pos += 4;
      else if (wire === 2) {
        const len = varint(), start = pos;
        pos += len;
        if (pos > end) throw new Error("truncated protobuf");
        visit(field, start, pos);
      } else throw new Error(`not an ONNX file (protobuf wire type ${wire})`);
    }
  };
  fields(d.length, (field, start, end) => {
    if (field !== 14) return; // metadata_props: StringStringEntryProto {1: key, 2: value}
    const kv = {};
    const save = pos;
    pos = start;
    fields(end, (f, s, e) => { kv[f] = dec.decode(d.subarray(s, e)); });
    pos = save;
    if (kv[1] !== undefined) out[kv[1]] = kv[2] ?? "";
  });
  return out;
}

/** Validate the JSON text stored under `vitlab` (vitlab_edge.metadata.parse_metadata); errors name `source`. */
export function parseMetadata(text, source) {
  const fail = (m) => { throw new ModelFormatError(`${source}: ${m}`); };
  if (text == null) {
    fail(`no '${METADATA_KEY}' metadata; export the model with \`vitlab export\` (an ONNX file from elsewhere does `
      + "not say how to preprocess its input)");
  }
  let meta;
  try { meta = JSON.parse(text); } catch (e) { fail(`the '${METADATA_KEY}' metadata is not valid JSON (${e.message})`); }
  if (meta === null || typeof meta !== "object" || Array.isArray(meta)) fail(`the '${METADATA_KEY}' metadata must be a JSON object`);
  let missing = REQUIRED.filter((k) => !(k in meta));
  if (missing.length) fail(`'${METADATA_KEY}' metadata lacks ${missing.join(", ")}; re-export the model`);
  if (meta.format > FORMAT) {
    fail(`metadata format ${meta.format} is newer than this kit understands (${FORMAT}); upgrade vitlab-edge-js`);
  }
  const task = meta.task === "detect" ? "detection" : meta.task;
  if (!(task in TASK_KEYS)) {
    fail(`task '${task}' is not one this kit serves (${Object.keys(TASK_KEYS).join(", ")}); upgrade vitlab-edge-js`);
  }
  missing = TASK_KEYS[task].filter((k) => !(k in meta));
  if (missing.length) fail(`'${METADATA_KEY}' metadata of a ${task} model lacks ${missing.join(", ")}; re-export the model`);
  const lacking = TASK_OUTPUTS[task].filter((o) => !meta.outputs.includes(o));
  if (lacking.length) fail(`a ${task} model must have outputs ${JSON.stringify(TASK_OUTPUTS[task])}, the metadata lists ${JSON.stringify(meta.outputs)}`);
  if (task === "detection" && (meta.resize !== "letterbox" || Number(meta.max_det) < 1)) {
    fail(`a detection model needs resize 'letterbox' and max_det >= 1, the metadata says '${meta.resize}', ${meta.max_det}`);
  }
  if (task === "generation" && (JSON.stringify(meta.inputs) !== JSON.stringify(GENERATION_INPUTS)
      || meta.objective !== "rectified_flow" || !["euler", "heun"].includes(meta.sampler)
      || Number(meta.steps) < 1 || Number(meta.null_class) < 1)) {
    fail(`a generation model needs inputs ${JSON.stringify(GENERATION_INPUTS)}, objective 'rectified_flow', sampler `
      + `euler or heun, steps >= 1 and null_class >= 1; the metadata says ${JSON.stringify(meta.inputs)}, `
      + `'${meta.objective}', '${meta.sampler}', ${meta.steps}, ${meta.null_class}`);
  }
  const [c, h, w] = meta.input_size;
  if (![1, 3].includes(c) || h < 1 || w < 1) fail(`bad input_size ${JSON.stringify(meta.input_size)} in the metadata`);
  return {...meta, task};
}

/** The validated `vitlab` metadata of an ONNX file's bytes. */
export function readMetadata(bytes, source = "model") {
  let props;
  try { props = onnxMetadataProps(bytes); } catch (e) {
    throw new ModelFormatError(`${source}: not a loadable ONNX model (${e.message})`);
  }
  return parseMetadata(props[METADATA_KEY], source);
}
