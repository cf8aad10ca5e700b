// Decoded pixels -> the model's CHW uint8 input, exactly as the Python edge kit makes it (vitlab_edge.imaging):
// alpha composited on white as Pillow's paste does, Pillow's resampling (its filters, support, fixed-point
// coefficients with 22 fractional bits and its rounding), the resize policies, and the channel layout. Every
// function here is integer/float64 arithmetic that JavaScript reproduces bit for bit, so the same decoded pixels
// give the same model input in a browser, in Node and in Python.

/**
 * @typedef {{width:number,height:number,channels:number,data:Uint8Array}} Pixels  HWC uint8, 1-4 channels
 */

export const RESIZE_POLICIES = ["squash", "center_crop", "letterbox"];
export const INTERPOLATIONS = ["nearest", "bilinear", "bicubic", "area"];
export const DRAFT_MARGIN = 4;

/** Python's round(): half to even. */
export function roundHalfEven(x) {
  const r = Math.round(x);
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** Python's float floor division a // b. */
export function pyFloorDiv(a, b) {
  const mod = a % b;
  let div = (a - mod) / b;
  if (mod && (b < 0) !== (mod < 0)) div -= 1;
  if (!div) return 0 * (a / b);
  let f = Math.floor(div);
  if (div - f > 0.5) f += 1;
  return f;
}

/** vitlab_edge.boxes.letterbox_geometry: [scaleY, scaleX, top, left] of fitting srcHW inside dstHW. */
export function letterboxGeometry([ih, iw], [h, w]) {
  if (Math.min(ih, iw, h, w) < 1) throw new Error(`letterbox sizes must be positive, got ${[ih, iw]} -> ${[h, w]}`);
  const scale = Math.min(h / ih, w / iw);
  const rh = Math.min(h, Math.max(1, roundHalfEven(ih * scale))), rw = Math.min(w, Math.max(1, roundHalfEven(iw * scale)));
  return [rh / ih, rw / iw, Math.floor((h - rh) / 2), Math.floor((w - rw) / 2)];
}

/** vitlab_edge.boxes.boxes_to_original: boxes [x1,y1,x2,y2] in model-input pixels -> source pixels (float32). */
export function boxesToOriginal(boxes, srcHW, dstHW) {
  const [sy, sx, top, left] = letterboxGeometry(srcHW, dstHW);
  const scale = [sx, sy, sx, sy], offset = [left, top, left, top], hi = [srcHW[1], srcHW[0], srcHW[1], srcHW[0]];
  return boxes.map((b) => b.map((v, i) => Math.fround(Math.min(Math.max((v - offset[i]) / scale[i], 0), hi[i]))));
}

/** vitlab_edge.boxes.boxes_to_input: boxes in source pixels -> the letterboxed model input (float32). */
export function boxesToInput(boxes, srcHW, dstHW) {
  const [sy, sx, top, left] = letterboxGeometry(srcHW, dstHW);
  const scale = [sx, sy, sx, sy], offset = [left, top, left, top];
  return boxes.map((b) => b.map((v, i) => Math.fround(v * scale[i] + offset[i])));
}

/**
 * The JPEG scale denominator (1, 2, 4, 8) Pillow's draft picks for a fileW x fileH JPEG going to a model of
 * inputHW (vitlab_edge.imaging.draft_request, then JpegImagePlugin.draft); 1 for letterbox (boxes need the full size).
 */
export function draftScale(fileW, fileH, inputHW, policy = "squash", cropPct = 1.0) {
  if (policy === "letterbox") return 1;
  const side = -pyFloorDiv(-Math.max(...inputHW) * DRAFT_MARGIN, Math.min(cropPct, 1.0));
  const scale = Math.min(Math.floor(fileW / side), Math.floor(fileH / side));
  for (const s of [8, 4, 2, 1]) if (scale >= s) return s;
  return 1;
}

/** EXIF orientation (1-8) applied as Pillow's ImageOps.exif_transpose does. */
export function applyOrientation(img, orientation) {
  if (!orientation || orientation === 1) return img;
  const {width: w, height: h, channels: c, data} = img;
  const swap = orientation >= 5;
  const ow = swap ? h : w, oh = swap ? w : h, out = new Uint8Array(data.length);
  for (let y = 0; y < oh; y++) {
    for (let x = 0; x < ow; x++) {
      let sx, sy; // the source pixel shown at (x, y)
      switch (orientation) {
        case 2: sx = w - 1 - x; sy = y; break;
        case 3: sx = w - 1 - x; sy = h - 1 - y; break;
        case 4: sx = x; sy = h - 1 - y; break;
        case 5: sx = y; sy = x; break;
        case 6: sx = y; sy = h - 1 - x; break;
        case 7: sx = w - 1 - y; sy = h - 1 - x; break;
        default: sx = w - 1 - y; sy = x; break; // 8
      }
      const si = (sy * w + sx) * c, di = (y * ow + x) * c;
      for (let k = 0; k < c; k++) out[di + k] = data[si + k];
    }
  }
  return {width: ow, height: oh, channels: c, data: out};
}

/**
 * 1 (grey) or 3 (RGB) channels, as vitlab_edge.imaging.pil_to_array: grey+alpha and RGBA composited on white with
 * Pillow's paste arithmetic (out = (bg * (255 - a) + px * a + 128) / 255, Pillow's DIV255 rounding).
 */
export function flattenAlpha(img) {
  const {width, height, channels: c, data} = img;
  if (c === 1 || c === 3) return img;
  const n = width * height, out = new Uint8Array(n * 3);
  for (let i = 0; i < n; i++) {
    const a = data[i * c + c - 1];
    for (let k = 0; k < 3; k++) {
      const v = data[i * c + (c === 2 ? 0 : k)];
      const t = 255 * (255 - a) + v * a + 128;
      out[i * 3 + k] = ((t >> 8) + t) >> 8;
    }
  }
  return {width, height, channels: 3, data: out};
}

// --- Pillow's resampling (src/libImaging/Resample.c) ------------------------------------------------------------
const FILTERS = {
  area: [0.5, (x) => (x > -0.5 && x <= 0.5 ? 1.0 : 0.0)],
  bilinear: [1.0, (x) => { x = Math.abs(x); return x < 1.0 ? 1.0 - x : 0.0; }],
  bicubic: [2.0, (x) => {
    const a = -0.5;
    x = Math.abs(x);
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
  }],
};
const PRECISION_BITS = 22;

function coeffs(inSize, outSize, [support0, filter]) {
  const scale = inSize / outSize, filterscale = Math.max(scale, 1.0), support = support0 * filterscale;
  const ksize = Math.ceil(support) * 2 + 1, bounds = new Int32Array(outSize * 2), kk = new Int32Array(outSize * ksize);
  const w = new Float64Array(ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale, ss = 1.0 / filterscale;
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    let ww = 0.0;
    for (let x = 0; x < xmax; x++) { w[x] = filter((x + xmin - center + 0.5) * ss); ww += w[x]; }
    for (let x = 0; x < xmax; x++) {
      const k = ww !== 0.0 ? w[x] / ww : w[x];
      kk[xx * ksize + x] = Math.trunc(k < 0 ? -0.5 + k * (1 << PRECISION_BITS) : 0.5 + k * (1 << PRECISION_BITS));
    }
    bounds[2 * xx] = xmin;
    bounds[2 * xx + 1] = xmax;
  }
  return {ksize, bounds, kk};
}

const clip8 = (ss) => { const v = ss >> PRECISION_BITS; return v < 0 ? 0 : v > 255 ? 255 : v; };

function resampleAxis(src, sw, sh, c, out, ow, oh, {ksize, bounds, kk}, horizontal, offset) {
  const half = 1 << (PRECISION_BITS - 1);
  for (let yy = 0; yy < oh; yy++) {
    for (let xx = 0; xx < ow; xx++) {
      const j = horizontal ? xx : yy, min = bounds[2 * j], n = bounds[2 * j + 1], kb = j * ksize;
      for (let k = 0; k < c; k++) {
        let ss = half;
        if (horizontal) {
          const row = (yy + offset) * sw;
          for (let x = 0; x < n; x++) ss += src[(row + x + min) * c + k] * kk[kb + x];
        } else {
          for (let y = 0; y < n; y++) ss += src[((y + min) * sw + xx) * c + k] * kk[kb + y];
        }
        out[(yy * ow + xx) * c + k] = clip8(ss | 0);
      }
    }
  }
}

function nearest(img, ow, oh) {
  // Pillow's resize with NEAREST: ImagingScaleAffine, the source coordinate stepped in doubles
  const {width: w, height: h, channels: c, data} = img, out = new Uint8Array(ow * oh * c);
  const a0 = w / ow, a4 = h / oh, xin = new Int32Array(ow);
  let xo = a0 * 0.5;
  for (let x = 0; x < ow; x++, xo += a0) xin[x] = Math.min(xo < 0 ? -1 : Math.trunc(xo), w - 1);
  let yo = a4 * 0.5;
  for (let y = 0; y < oh; y++, yo += a4) {
    const yi = Math.min(yo < 0 ? -1 : Math.trunc(yo), h - 1);
    for (let x = 0; x < ow; x++) {
      for (let k = 0; k < c; k++) out[(y * ow + x) * c + k] = data[(yi * w + xin[x]) * c + k];
    }
  }
  return {width: ow, height: oh, channels: c, data: out};
}

/** Pillow's Image.resize((ow, oh), method) of HWC uint8 pixels, channel by channel. */
export function resample(img, [oh, ow], interpolation) {
  const {width: w, height: h, channels: c, data} = img;
  if (w === ow && h === oh) return img;
  if (interpolation === "nearest") return nearest(img, ow, oh);
  const filter = FILTERS[interpolation];
  if (!filter) throw new Error(`interpolation must be one of ${INTERPOLATIONS}, got ${interpolation}`);
  const vert = coeffs(h, oh, filter);
  const first = vert.bounds[0], last = vert.bounds[2 * oh - 2] + vert.bounds[2 * oh - 1];
  let cur = data, cw = w;
  if (ow !== w) {
    const tmp = new Uint8Array(ow * (last - first) * c);
    resampleAxis(data, w, h, c, tmp, ow, last - first, coeffs(w, ow, filter), true, first);
    for (let i = 0; i < oh; i++) vert.bounds[2 * i] -= first;
    cur = tmp;
    cw = ow;
  }
  if (oh !== h) {
    const out = new Uint8Array(ow * oh * c);
    resampleAxis(cur, cw, 0, c, out, ow, oh, vert, false, 0);
    cur = out;
  }
  return {width: ow, height: oh, channels: c, data: cur};
}

/** vitlab_edge.imaging.resize: pixels of any size -> [h, w] by the resize policy, channel count kept. */
export function resize(img, [h, w], policy = "squash", interpolation = "bilinear", cropPct = 1.0) {
  if (!RESIZE_POLICIES.includes(policy)) throw new Error(`resize policy must be one of ${RESIZE_POLICIES}, got ${policy}`);
  if (!INTERPOLATIONS.includes(interpolation)) {
    throw new Error(`interpolation must be one of ${INTERPOLATIONS}, got ${interpolation}`);
  }
  const {width: iw, height: ih, channels: c} = img;
  if (policy === "squash") return resample(img, [h, w], interpolation);
  if (policy === "center_crop") {
    const scale = Math.max(h / cropPct / ih, w / cropPct / iw);
    const rh = Math.max(h, roundHalfEven(ih * scale)), rw = Math.max(w, roundHalfEven(iw * scale));
    const big = resample(img, [rh, rw], interpolation);
    const top = Math.floor((rh - h) / 2), left = Math.floor((rw - w) / 2), out = new Uint8Array(h * w * c);
    for (let y = 0; y < h; y++) {
      out.set(big.data.subarray(((y + top) * rw + left) * c, ((y + top) * rw + left + w) * c), y * w * c);
    }
    return {width: w, height: h, channels: c, data: out};
  }
  const [sy, sx, top, left] = letterboxGeometry([ih, iw], [h, w]);
  const rh = roundHalfEven(ih * sy), rw = roundHalfEven(iw * sx);
  const small = resample(img, [rh, rw], interpolation), out = new Uint8Array(h * w * c);
  for (let y = 0; y < rh; y++) out.set(small.data.subarray(y * rw * c, (y + 1) * rw * c), ((y + top) * w + left) * c);
  return {width: w, height: h, channels: c, data: out};
}

/** vitlab_edge.imaging.to_layout: HWC -> CHW uint8 with `channels` planes (ITU-R 601 luma for grey models). */
export function toLayout(img, channels) {
  const {width, height, channels: have, data} = img, n = width * height, out = new Uint8Array(n * channels);
  for (let i = 0; i < n; i++) {
    for (let k = 0; k < channels; k++) {
      let v;
      if (have === channels) v = data[i * have + k];
      else if (channels === 1 && have >= 3) {
        const p = i * have; // numpy: (r, g, b) @ (0.299, 0.587, 0.114), then round half to even
        v = roundHalfEven(data[p] * 0.299 + data[p + 1] * 0.587 + data[p + 2] * 0.114);
      } else if (channels === 1 || have < 3) v = data[i * have];
      else v = data[i * have + k];
      out[k * n + i] = v;
    }
  }
  return out;
}

/** Decoded pixels (EXIF applied) -> the model's CHW uint8 input, as the `vitlab` metadata says. */
export function preprocess(img, meta) {
  const [c, h, w] = meta.input_size;
  const flat = flattenAlpha(img);
  return toLayout(resize(flat, [h, w], meta.resize, meta.interpolation, Number(meta.crop_pct)), c);
}
