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
export class EdgeModel extends ExportedModel {
  prepare(image: Uint8Array | Pixels): Promise<{ input: Uint8Array; srcHW: [number, number] }>;
  run(batch: Uint8Array, n: number, outputs?: string[]): Promise<Record<string, { data: ArrayLike<number | bigint>; dims: number[] }>>;
  predict(inputs: Array<{ source?: string; bytes?: Uint8Array; pixels?: Pixels }>, opts?: { batchSize?: number; topk?: number }): Promise<EdgeRecord[]>;
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
// Node only (src/node.js)
export function openModel(file: string, opts?: { executionProviders?: string[]; sessionOptions?: object }): Promise<EdgeModel | Sampler>;
