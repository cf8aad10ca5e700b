// Types of vitlab-edge-js (src/index.js for browsers, src/node.js for Node).
export interface Pixels { width: number; height: number; channels: number; data: Uint8Array }
export interface VitlabMetadata {
  format: number; task: "classification" | "detection" | "generation" | "embedding"; labels: string[];
  input_size: [number, number, number]; resize: "squash" | "center_crop" | "letterbox";
  interpolation: "nearest" | "bilinear" | "bicubic" | "area"; crop_pct: number; inputs: string[]; outputs: string[];
  precision: string; [key: string]: unknown;
}
export interface TopK { label: string; class_id: number; prob: number }
export interface RecordBase { index: number; source: string; error: string | null }
export type ClassificationRecord = RecordBase & { label: string | null; class_id: number | null; prob: number | null; topk: TopK[] };
export type DetectionRecord = RecordBase & { boxes: number[][]; scores: number[]; labels: string[]; class_ids: number[] };
export type EmbeddingRecord = RecordBase & { embedding: number[] };
export type EdgeRecord = ClassificationRecord | DetectionRecord | EmbeddingRecord;
export interface Platform { inflate: (d: Uint8Array) => Uint8Array | Promise<Uint8Array>; fallback?: (b: Uint8Array) => Promise<Pixels> }
export interface OpenOptions { source?: string; executionProviders?: string[]; sessionOptions?: object; platform?: Platform }
export class ModelFormatError extends Error {}
export class ExportedModel {
  static open(ort: unknown, bytes: Uint8Array, opts?: OpenOptions): Promise<EdgeModel | Sampler>;
  readonly metadata: VitlabMetadata; readonly providers: string[]; readonly labels: string[];
  readonly inputSize: [number, number, number]; readonly task: string; release(): Promise<void>;
}
/** An input: file bytes, a lazy read() (Node's fileInputs; a thrown Error's `reason` becomes the record's error) or pixels. */
export interface Input { source?: string; bytes?: Uint8Array; read?: () => Uint8Array | Promise<Uint8Array>; pixels?: Pixels }
export class EdgeModel extends ExportedModel {
  prepare(image: Uint8Array | Pixels): Promise<{ input: Uint8Array; srcHW: [number, number] }>;
  run(batch: Uint8Array, n: number, outputs?: string[]): Promise<Record<string, { data: ArrayLike<number | bigint>; dims: number[] }>>;
  predict(inputs: Input[], opts?: { batchSize?: number; topk?: number; onRecord?: (r: EdgeRecord) => void }): Promise<EdgeRecord[]>;
  /** predict() one batch at a time. */
  stream(inputs: Input[], opts?: { batchSize?: number; topk?: number }): AsyncGenerator<EdgeRecord>;
}
export class Sampler extends ExportedModel {
  readonly numClasses: number;
  sample(labels: Array<number | string>, opts?: { noise?: Float32Array; seed?: number; steps?: number; guidance?: number;
    method?: "euler" | "heun"; batchSize?: number }): Promise<Uint8Array>;
}
export function readMetadata(onnxBytes: Uint8Array, source?: string): VitlabMetadata;
export function preprocess(img: Pixels, meta: VitlabMetadata): Uint8Array;
export function decodeJpeg(bytes: Uint8Array, scale?: 1 | 2 | 4 | 8): Pixels & { orientation: number };
export function gaussianNoise(count: number, seed?: number): Float32Array;
/** Python's json.dumps text of a record (", " / ": ", ASCII, floats as repr under FLOAT_KEYS): vitlab_edge's bytes. */
export function pyDumps(value: unknown, float?: boolean): string;
export function jsonLine(record: object): string;
/** vitlab_edge.files.write_csv's text and read_records' parse of it. */
export function csvText(records: Iterable<object>, fields: string[]): string;
export function csvRecords(text: string): Array<Record<string, unknown>>;
/** COCO results JSON text (vitlab_edge.files.write_coco) from detection records and the ground-truth document. */
export function cocoResultsText(records: Iterable<DetectionRecord>, annotations: object, labels: string[], name: string): { text: string; count: number };
// Node only (src/node.js)
export function openModel(file: string, opts?: { executionProviders?: string[]; sessionOptions?: object;
  fallback?: (b: Uint8Array) => Promise<Pixels> }): Promise<EdgeModel | Sampler>;
/** vitlab_edge.sources.expand_inputs (folders, .txt/.lst lists, files; the same path strings) and lazy file inputs. */
export function expandInputs(args: string[]): string[];
export function fileInputs(files: string[]): Input[];
export const IMAGE_EXTENSIONS: string[];
/** vitlab_edge.journal.ResumableRun: the same journal files, so either CLI resumes the other's run. */
export class ResumableRun {
  constructor(out: string, keys: string[], resume: boolean, earlier?: ((out: string) => object[]) | null);
  readonly todo: number[]; readonly earlier: number; readonly errors: number;
  record(records: AsyncIterable<EdgeRecord>, stop?: () => boolean): Promise<number>;
  lines(): Generator<string>; merged(): Generator<EdgeRecord>; writeJsonl(): number; finish(): void; stopped(): string | null;
}
export function readRecords(file: string): object[];
