// Image file bytes -> decoded pixels the way vitlab_edge.imaging.read_image decodes them: JPEG and PNG with this
// package's own decoders (the same pixels as Pillow, JPEGs at Pillow's draft scale), other formats by a platform
// decoder the caller passes (a canvas in a browser), then EXIF orientation applied.

import {decodeJpeg, isJpeg, jpegInfo, JpegUnsupportedError} from "./jpeg.js";
import {decodePng, isPng} from "./png.js";
import {applyOrientation, draftScale} from "./imaging.js";

export const DEFAULT_MAX_PIXELS = 89_478_485;

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
  if (!fallback) throw new Error("cannot identify image file (this decoder reads JPEG and PNG)");
  const img = await fallback(bytes);
  checkPixels(img.width, img.height, maxPixels);
  return img;
}

function checkPixels(w, h, maxPixels) {
  if (maxPixels != null && w * h > maxPixels) {
    throw new Error(`${w}x${h} exceeds the pixel limit ${maxPixels} (decompression bomb guard)`);
  }
}
