// Image file bytes -> decoded pixels the way vitlab_edge.imaging.read_image decodes them: JPEG and PNG with this
// package's own decoders (the same pixels as Pillow, JPEGs at Pillow's draft scale), other formats by a platform
// decoder the caller passes (a canvas in a browser), then EXIF orientation applied.

import {decodeJpeg, isJpeg, jpegInfo, JpegUnsupportedError} from "./jpeg.js";
import {decodePng, isPng, tiffOrientation} from "./png.js";
import {applyOrientation, draftScale} from "./imaging.js";

export const DEFAULT_MAX_PIXELS = 89_478_485;

/** Bytes no decoder here reads (Pillow's UnidentifiedImageError: a record's error names the file the same way). */
export class UnidentifiedImageError extends Error {
  constructor(message = "cannot identify image file") { super(message); this.name = "UnidentifiedImageError"; }
}

/**
 * @param {Uint8Array} bytes  the file's bytes
 * @param {object} opts
 * @param {object} [opts.meta]  the model's `vitlab` metadata: with it a JPEG decodes at Pillow's draft scale
 * @param {(d: Uint8Array) => Uint8Array|Promise<Uint8Array>} opts.inflate  zlib inflate (PNG)
 * @param {(b: Uint8Array) => Promise<object>} [opts.fallback]  platform decoder for other formats -> RGBA pixels,
 *   EXIF applied
 * @param {number|null} [opts.maxPixels]
 * @returns {Promise<{width:number,height:number,channels:number,data:Uint8Array}>}
 */
export async function decodeImage(bytes, {meta = null, inflate, fallback = null, maxPixels = DEFAULT_MAX_PIXELS} = {}) {
  if (!bytes.length) throw new Error("empty file");
  if (isJpeg(bytes)) {
    try {
      const info = jpegInfo(bytes);
      checkPixels(info.width, info.height, maxPixels);
      let scale = 1;
      if (meta) {
        const [, h, w] = meta.input_size;
        scale = draftScale(info.width, info.height, [h, w], meta.resize, Number(meta.crop_pct));
      }
      const img = decodeJpeg(bytes, scale);
      return applyOrientation(img, img.orientation);
    } catch (e) {
      if (!(e instanceof JpegUnsupportedError) || !fallback) throw e;
    }
  } else if (isPng(bytes)) {
    const w = (bytes[16] << 24 >>> 0) + (bytes[17] << 16) + (bytes[18] << 8) + bytes[19];
    const h = (bytes[20] << 24 >>> 0) + (bytes[21] << 16) + (bytes[22] << 8) + bytes[23];
    checkPixels(w, h, maxPixels);
    const img = await decodePng(bytes, inflate);
    return applyOrientation(img, img.orientation);
  }
  if (!fallback) {
    const format = isWebp(bytes) ? "WebP" : fourcc(bytes, 0).startsWith("GIF8") ? "GIF"
      : bytes[0] === 0x42 && bytes[1] === 0x4d ? "BMP" : null;
    if (format) { // Pillow reads these; a browser page decodes them with the browser's decoder (the fallback)
      throw new Error(`${format} is decoded by the browser's decoder, which Node lacks (this client decodes JPEG and PNG `
        + "itself; pass platform.fallback, or use vitlab-edge)");
    }
    throw new UnidentifiedImageError();
  }
  // WebP: browsers differ on its EXIF orientation (Chromium ignores it, Pillow applies it): the browser gets the
  // file without its EXIF chunk, and the orientation is applied here, as for JPEG and PNG
  const webp = isWebp(bytes) ? withoutWebpExif(bytes) : null;
  const img = await fallback(webp ? webp.bytes : bytes);
  checkPixels(img.width, img.height, maxPixels);
  return webp ? applyOrientation(img, webp.orientation) : img;
}

const fourcc = (b, i) => String.fromCharCode(b[i], b[i + 1], b[i + 2], b[i + 3]);
const u32le = (b, i) => (b[i] | (b[i + 1] << 8) | (b[i + 2] << 16)) + b[i + 3] * 2 ** 24;

export const isWebp = (b) => b.length >= 20 && fourcc(b, 0) === "RIFF" && fourcc(b, 8) === "WEBP";

/** A WebP file without its EXIF chunk (VP8X's EXIF flag cleared) and the orientation that chunk held (1: none). */
export function withoutWebpExif(bytes) {
  const keep = [];
  let pos = 12, orientation = 1, vp8x = -1;
  while (pos + 8 <= bytes.length) {
    const type = fourcc(bytes, pos), size = u32le(bytes, pos + 4), end = Math.min(bytes.length, pos + 8 + size + (size & 1));
    if (type === "EXIF") {
      let t = bytes.subarray(pos + 8, Math.min(bytes.length, pos + 8 + size));
      if (fourcc(t, 0) === "Exif" && t[4] === 0 && t[5] === 0) t = t.subarray(6); // Pillow reads both forms
      orientation = tiffOrientation(t) || 1;
    } else {
      if (type === "VP8X") vp8x = keep.reduce((n, c) => n + c.length, 0);
      keep.push(bytes.subarray(pos, end));
    }
    pos = end;
  }
  if (orientation === 1 && keep.reduce((n, c) => n + c.length, 0) === bytes.length - 12) return {bytes, orientation};
  const body = keep.reduce((n, c) => n + c.length, 0), out = new Uint8Array(12 + body);
  out.set(bytes.subarray(0, 12));
  new DataView(out.buffer).setUint32(4, 4 + body, true);
  let o = 12;
  for (const c of keep) { out.set(c, o); o += c.length; }
  if (vp8x >= 0) out[12 + vp8x + 8] &= ~0x08; // the EXIF flag
  return {bytes: out, orientation};
}

function checkPixels(w, h, maxPixels) {
  if (maxPixels != null && w * h > maxPixels) {
    throw new Error(`${w}x${h} exceeds the pixel limit ${maxPixels} (decompression bomb guard)`);
  }
}
