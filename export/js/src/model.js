// EdgeModel and Sampler on any onnxruntime JavaScript package (onnxruntime-node or onnxruntime-web, passed in as
// `ort`): open a vitlab ONNX file, read its metadata, turn images into its uint8 input exactly as the Python kit
// does, run it and decode the outputs into vitlab_edge's records.

import {decodeImage, UnidentifiedImageError} from "./decode.js";
import {preprocess} from "./imaging.js";
import {GENERATION_INPUTS, ModelFormatError, readMetadata} from "./metadata.js";
import {decoderFor} from "./records.js";
import {pyRepr} from "./pyjson.js";
import {gaussianNoise, sample} from "./sampling.js";

/** A vitlab ONNX file opened with onnxruntime: `session`, the validated `metadata`, `providers` (what ran). */
export class ExportedModel {
  /**
   * @param {object} ort  the onnxruntime module (onnxruntime-node or onnxruntime-web)
   * @param {Uint8Array} bytes  the .onnx file
   * @param {{source?: string, executionProviders?: string[], sessionOptions?: object, platform?: object}} opts
   *   platform: {inflate, fallback} image decoding hooks (see decode.js)
   */
  static async open(ort, bytes, {source = "model.onnx", executionProviders = null, sessionOptions = {},
    platform = {}} = {}) {
    const metadata = readMetadata(bytes, source);
    const providers = executionProviders || ["cpu"];
    let session;
    try {
      session = await ort.InferenceSession.create(bytes, {...sessionOptions, executionProviders: providers});
    } catch (e) {
      throw new ModelFormatError(`${source}: not a loadable ONNX model (${String(e.message || e).split("\n")[0].slice(0, 200)})`);
    }
    if (JSON.stringify(session.inputNames) !== JSON.stringify(metadata.inputs)) {
      throw new ModelFormatError(`${source}: graph inputs ${JSON.stringify(session.inputNames)} differ from the metadata's ${JSON.stringify(metadata.inputs)}`);
    }
    const cls = metadata.task === "generation" ? Sampler : EdgeModel;
    return new cls(ort, session, metadata, source, providers, platform);
  }

  constructor(ort, session, metadata, source, providers, platform) {
    Object.assign(this, {ort, session, metadata, source, providers, platform});
  }

  get labels() { return [...this.metadata.labels]; }
  get inputSize() { return this.metadata.input_size.map(Number); }
  get task() { return this.metadata.task; }
  async release() { await this.session.release?.(); }
}

/** One exported classifier, detector or embedder, fed images. */
export class EdgeModel extends ExportedModel {
  constructor(...args) {
    super(...args);
    if (this.metadata.task === "generation") {
      throw new ModelFormatError(`${this.source}: a generation model takes no images; use Sampler`);
    }
    try { this.decoder = decoderFor(this.metadata.task); } catch (e) {
      throw new ModelFormatError(`${this.source}: ${e.message}; upgrade vitlab-edge-js`);
    }
  }

  /** Image file bytes -> decoded pixels (JPEG at Pillow's draft scale for this model, EXIF applied). */
  decode(bytes, maxPixels) {
    return decodeImage(bytes, {meta: this.metadata, inflate: this.platform.inflate, fallback: this.platform.fallback,
                               maxPixels});
  }

  /** Image file bytes or decoded pixels -> {input: CHW uint8, srcHW: [h, w] of the decoded image}. */
  async prepare(image) {
    const px = image instanceof Uint8Array || image instanceof ArrayBuffer
      ? await this.decode(image instanceof Uint8Array ? image : new Uint8Array(image)) : image;
    return {input: preprocess(px, this.metadata), srcHW: [px.height, px.width]};
  }

  /** Raw outputs {name: ort.Tensor} for a ready uint8 batch of `n` inputs. */
  async run(batch, n, outputs = null) {
    const [c, h, w] = this.inputSize;
    if (!(batch instanceof Uint8Array) || batch.length !== n * c * h * w) {
      throw new Error(`${this.source} takes uint8 [N, ${c}, ${h}, ${w}] batches; use predict() to resize images`);
    }
    const feeds = {[this.metadata.inputs[0]]: new this.ort.Tensor("uint8", batch, [n, c, h, w])};
    return this.session.run(feeds, outputs || this.session.outputNames);
  }

  /**
   * One record per input, in order: {index, source, <the task's fields>, error}. `inputs`: items
   * {source, bytes} (a file), {source, read} (read() gives the bytes, or throws an Error whose `reason` is the
   * record's error) or {source, pixels} (decoded pixels); an unreadable one gets `error`, the batch goes on.
   */
  async predict(inputs, {batchSize = 32, topk = 5, onRecord = null} = {}) {
    const records = [];
    for await (const rec of this.stream(inputs, {batchSize, topk})) {
      records.push(rec);
      if (onRecord) onRecord(rec);
    }
    return records;
  }

  /** predict() as an async generator: a batch is read, decoded and run, then its records are yielded. */
  async* stream(inputs, {batchSize = 32, topk = 5} = {}) {
    if (!(batchSize >= 1)) throw new Error(`batchSize must be >= 1, got ${batchSize}`);
    for (let start = 0; start < inputs.length; start += batchSize) {
      const chunk = inputs.slice(start, start + batchSize), records = [], ready = [], arrays = [], sizes = [];
      for (const [j, item] of chunk.entries()) {
        const rec = {index: start + j, source: item.source ?? `<input ${start + j}>`, ...this.decoder.empty(), error: null};
        try {
          const data = item.bytes ?? item.pixels ?? (item.read ? await item.read() : null);
          if (data == null) throw new Error("an input needs bytes or pixels");
          const {input, srcHW} = await this.prepare(data);
          arrays.push(input);
          sizes.push(srcHW);
          ready.push(rec);
        } catch (e) {
          rec.error = item.readError ?? e.reason ?? (e instanceof UnidentifiedImageError // as Pillow says it
            ? `${e.name}: ${e.message} ${pyRepr(rec.source)}` : `${e.name === "Error" ? "" : `${e.name}: `}${e.message}`);
        }
        records.push(rec);
      }
      if (arrays.length) {
        const batch = new Uint8Array(arrays.length * arrays[0].length);
        arrays.forEach((a, i) => batch.set(a, i * a.length));
        const outputs = await this.run(batch, arrays.length, this.decoder.outputs);
        const inputHW = this.inputSize.slice(1);
        ready.forEach((rec, i) => Object.assign(rec, this.decoder.decode(outputs, i,
          {labels: this.labels, topk, srcHW: sizes[i], inputHW})));
      }
      yield* records;
    }
  }
}

/** One exported generation model (one guided denoiser step), sampled with vitlab_edge's loop. */
export class Sampler extends ExportedModel {
  get numClasses() { return Number(this.metadata.null_class); }

  /** Class ids (numbers or digit strings) or names -> ids; id numClasses is "no label". */
  classIds(labels) {
    const index = new Map(this.labels.map((n, i) => [n, i]));
    return labels.map((l) => {
      if (typeof l === "string" && index.has(l)) return index.get(l);
      if (Number.isInteger(l) || (typeof l === "string" && /^\d+$/.test(l))) {
        if (!(Number(l) >= 0 && Number(l) <= this.numClasses)) {
          throw new Error(`class id ${l} is out of range: this model has classes 0...${this.numClasses - 1} (${this.numClasses}: no label)`);
        }
        return Number(l);
      }
      throw new Error(`label '${l}' is not one of this model's labels (${this.labels.join(", ") || "none: use class ids"})`);
    });
  }

  /** One guided denoiser call on the session. */
  step = async (x, t, y, g) => {
    const [c, h, w] = this.inputSize, n = t.length, T = this.ort.Tensor;
    const feeds = {x: new T("float32", x, [n, c, h, w]), t: new T("float32", t, [n]), y: new T("int64", y, [n]),
                   guidance: new T("float32", g, [n])};
    return (await this.session.run(feeds, ["v"])).v.data;
  };

  /**
   * uint8 images [N, H, W, C] for `labels`; `noise` float32 [N*C*H*W] (default: gaussianNoise(seed)); steps,
   * guidance and method default to the metadata's.
   */
  async sample(labels, {noise = null, seed = 0, steps = null, guidance = null, method = null, batchSize = 256,
    onStep = null} = {}) {
    const m = this.metadata, ids = this.classIds(labels), [c, h, w] = this.inputSize;
    return sample(this.step, ids, [c, h, w], noise ?? gaussianNoise(ids.length * c * h * w, seed),
      {steps: Number(steps ?? m.steps), guidance: Number(guidance ?? m.guidance), method: method ?? m.sampler,
       batchSize, onStep});
  }
}

export {GENERATION_INPUTS};
