// vitlab-edge-js: run exported vitlab ONNX models with onnxruntime (web or node) and get vitlab_edge's records.
// Runtime-neutral: pass the onnxruntime module to ExportedModel.open (node.js does it for Node).

export {ExportedModel, EdgeModel, Sampler} from "./model.js";
export {readMetadata, parseMetadata, onnxMetadataProps, ModelFormatError, METADATA_KEY, TASK_OUTPUTS} from "./metadata.js";
export {DECODERS, decoderFor, topkRecord, detectionRecord, round3} from "./records.js";
export {decodeImage, isWebp, withoutWebpExif, UnidentifiedImageError} from "./decode.js";
export {decodeJpeg, jpegInfo} from "./jpeg.js";
export {decodePng} from "./png.js";
export {preprocess, resize, resample, toLayout, flattenAlpha, applyOrientation, draftScale, letterboxGeometry,
  boxesToOriginal, boxesToInput, roundHalfEven} from "./imaging.js";
export {sample, toUint8, gaussianNoise, METHODS} from "./sampling.js";
export {pyDumps, pyFloat, pyString, pyRepr, jsonLine, csvText, csvRecords, parseCsv, FLOAT_KEYS, JSON_COLUMNS}
  from "./pyjson.js";
export {cocoImageIds, cocoCategoryIds, cocoBbox, checkCocoInputs, cocoResultsText} from "./coco.js";
