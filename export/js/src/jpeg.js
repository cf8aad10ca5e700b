// A baseline + progressive JPEG decoder that gives the same pixels as libjpeg-turbo (the decoder inside Pillow):
// the ISLOW integer IDCT, the reduced-size IDCTs libjpeg uses for Pillow's `draft` (1/2, 1/4, 1/8 scale, with
// chroma scaled by the IDCT instead of upsampled), "fancy" (triangle) chroma upsampling with libjpeg's rounding
// biases and edge replication, and libjpeg's fixed-point YCbCr -> RGB tables. The Python edge kit decodes JPEGs with
// `Image.draft` (vitlab_edge.imaging.draft_request); this module is what lets a browser and Node see the same pixels,
// which neither a canvas nor a pure-JS decoder such as jpeg-js give. Arithmetic-coded, lossless, 12-bit and
// CMYK/YCCK files raise JpegUnsupportedError (callers fall back to the platform decoder).

import {tiffOrientation} from "./png.js";

/** A JPEG this decoder does not handle (arithmetic coding, lossless, 12-bit, CMYK): use the platform decoder. */
export class JpegUnsupportedError extends Error {}

const ZIGZAG = new Int32Array([
  0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21,
  28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61,
  54, 47, 55, 62, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63]);

// libjpeg's post-IDCT range limit: the value (centred on 0) masked to 10 bits, then clamped to 0..255
const IDCT_LIMIT = new Uint8Array(1024);
for (let j = 0; j < 1024; j++) IDCT_LIMIT[j] = j < 128 ? j + 128 : j < 512 ? 255 : j < 896 ? 0 : j - 896;
const limit = (x) => IDCT_LIMIT[x & 1023];
const clamp8 = (x) => (x < 0 ? 0 : x > 255 ? 255 : x);

/** Width, height, components and EXIF orientation of a JPEG from its headers, without decoding the scans. */
export function jpegInfo(bytes) {
  const p = parse(bytes, true);
  return {width: p.width, height: p.height, components: p.components.length, orientation: p.orientation};
}

/** True when the bytes start with a JPEG SOI marker. */
export const isJpeg = (bytes) => bytes.length > 3 && bytes[0] === 0xff && bytes[1] === 0xd8 && bytes[2] === 0xff;

/**
 * Decode a JPEG as libjpeg-turbo does; `scale` 1, 2, 4 or 8 is libjpeg's scale_denom (Pillow's draft).
 * @returns {{width:number,height:number,channels:number,data:Uint8Array,orientation:number}} HWC, 1 or 3 channels;
 *   orientation: the EXIF orientation tag (not applied).
 */
export function decodeJpeg(bytes, scale = 1) {
  if (![1, 2, 4, 8].includes(scale)) throw new Error(`JPEG scale must be 1, 2, 4 or 8, got ${scale}`);
  const p = parse(bytes, false);
  return {...render(p, 8 / scale), orientation: p.orientation};
}

// --- markers -------------------------------------------------------------------------------------------------
function parse(bytes, headerOnly) {
  const d = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  if (!isJpeg(d)) throw new Error("not a JPEG file");
  const st = {qt: [], dc: [], ac: [], restart: 0, orientation: 1, adobe: null, jfif: false, frame: null,
              components: [], eobrun: 0};
  let pos = 2;
  const u16 = (i) => (d[i] << 8) | d[i + 1];
  for (;;) {
    while (pos < d.length && d[pos] !== 0xff) pos++; // skip junk between markers, as libjpeg does (with a warning)
    while (pos < d.length && d[pos] === 0xff) pos++;
    if (pos >= d.length) throw new Error("image file is truncated (no EOI marker)");
    const marker = d[pos++];
    if (marker === 0xd9) break; // EOI
    if (marker >= 0xd0 && marker <= 0xd7) continue;
    const len = u16(pos);
    const seg = d.subarray(pos + 2, pos + len);
    if (pos + len > d.length) throw new Error("image file is truncated");
    if (marker === 0xdb) readDQT(seg, st);
    else if (marker === 0xc4) readDHT(seg, st);
    else if (marker === 0xdd) st.restart = u16(pos + 2);
    else if (marker === 0xe1) st.orientation = exifOrientation(seg) || st.orientation;
    else if (marker === 0xe0 && seg[0] === 0x4a && seg[1] === 0x46 && seg[2] === 0x49 && seg[3] === 0x46) st.jfif = true;
    else if (marker === 0xee && seg.length >= 12 && String.fromCharCode(...seg.subarray(0, 5)) === "Adobe") {
      st.adobe = seg[11];
    } else if (marker === 0xc0 || marker === 0xc1 || marker === 0xc2) {
      readSOF(seg, st, marker === 0xc2);
      if (headerOnly) return st;
    } else if ((marker >= 0xc3 && marker <= 0xcf) && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc) {
      throw new JpegUnsupportedError(`JPEG process SOF${marker - 0xc0} (lossless or arithmetic) is not supported`);
    } else if (marker === 0xda) {
      if (!st.frame) throw new Error("JPEG scan before frame header");
      pos = decodeScan(d, pos + len, seg, st);
      continue;
    }
    pos += len;
  }
  if (!st.frame) throw new Error("JPEG has no frame header");
  return st;
}

function readDQT(seg, st) {
  for (let i = 0; i < seg.length;) {
    const pq = seg[i] >> 4, tq = seg[i] & 15;
    i++;
    const t = new Int32Array(64);
    for (let k = 0; k < 64; k++) {
      t[ZIGZAG[k]] = pq ? (seg[i + 2 * k] << 8) | seg[i + 2 * k + 1] : seg[i + k];
    }
    i += pq ? 128 : 64;
    st.qt[tq] = t;
  }
}

function readDHT(seg, st) {
  for (let i = 0; i < seg.length;) {
    const tc = seg[i] >> 4, th = seg[i] & 15;
    const counts = seg.subarray(i + 1, i + 17);
    let n = 0;
    for (const c of counts) n += c;
    const values = seg.subarray(i + 17, i + 17 + n);
    (tc ? st.ac : st.dc)[th] = buildHuffman(counts, values);
    i += 17 + n;
  }
}

function buildHuffman(counts, values) {
  // maxcode[l]: the largest code of length l (-1: none); valptr[l]: index of its first value; plus an 8-bit lookup
  const maxcode = new Int32Array(18).fill(-1), valptr = new Int32Array(17), mincode = new Int32Array(17);
  const look = new Int32Array(256).fill(0); // (length << 8) | value, 0 when the code is longer than 8 bits
  let code = 0, k = 0;
  for (let l = 1; l <= 16; l++) {
    valptr[l] = k;
    mincode[l] = code;
    for (let i = 0; i < counts[l - 1]; i++, k++, code++) {
      if (l <= 8) {
        for (let f = 0; f < 1 << (8 - l); f++) look[(code << (8 - l)) | f] = (l << 8) | values[k];
      }
    }
    maxcode[l] = counts[l - 1] ? code - 1 : -1;
    code <<= 1;
  }
  maxcode[17] = 0x7fffffff;
  return {maxcode, valptr, mincode, values: Uint8Array.from(values), look};
}

function readSOF(seg, st, progressive) {
  if (seg[0] !== 8) throw new JpegUnsupportedError(`${seg[0]}-bit JPEG samples are not supported`);
  const height = (seg[1] << 8) | seg[2], width = (seg[3] << 8) | seg[4], nc = seg[5];
  if (!height || !width) throw new JpegUnsupportedError("JPEG without a height in its frame header (DNL)");
  if (nc !== 1 && nc !== 3) throw new JpegUnsupportedError(`JPEG with ${nc} components (CMYK/YCCK) is not supported`);
  const comps = [];
  for (let i = 0; i < nc; i++) {
    const o = 6 + 3 * i;
    comps.push({id: seg[o], h: seg[o + 1] >> 4, v: seg[o + 1] & 15, tq: seg[o + 2], pred: 0});
  }
  const hmax = Math.max(...comps.map((c) => c.h)), vmax = Math.max(...comps.map((c) => c.v));
  const mcusX = Math.ceil(width / (8 * hmax)), mcusY = Math.ceil(height / (8 * vmax));
  for (const c of comps) {
    c.bw = Math.ceil(Math.ceil((width * c.h) / hmax) / 8); // blocks with image data
    c.bh = Math.ceil(Math.ceil((height * c.v) / vmax) / 8);
    c.bwAlloc = mcusX * c.h;
    c.bhAlloc = mcusY * c.v;
    c.coefs = new Int16Array(c.bwAlloc * c.bhAlloc * 64);
  }
  Object.assign(st, {frame: true, width, height, progressive, hmax, vmax, mcusX, mcusY, components: comps});
}

function exifOrientation(seg) { // "Exif\0\0" then a TIFF block
  if (seg.length < 14 || seg[0] !== 0x45 || seg[1] !== 0x78 || seg[2] !== 0x69 || seg[3] !== 0x66) return 0;
  return tiffOrientation(seg.subarray(6));
}

// --- entropy decoding ----------------------------------------------------------------------------------------
function decodeScan(d, start, seg, st) {
  const ns = seg[0];
  const comps = [];
  for (let i = 0; i < ns; i++) {
    const c = st.components.find((x) => x.id === seg[1 + 2 * i]);
    if (!c) throw new Error("JPEG scan names an unknown component");
    c.dcTable = st.dc[seg[2 + 2 * i] >> 4];
    c.acTable = st.ac[seg[2 + 2 * i] & 15];
    comps.push(c);
  }
  const o = 1 + 2 * ns;
  const ss = seg[o], se = seg[o + 1], ah = seg[o + 2] >> 4, al = seg[o + 2] & 15;
  // bit reader over the entropy-coded segment; a marker ends the data (zeros are fed past it, as libjpeg does)
  let pos = start, buf = 0, bits = 0, hitMarker = false;
  const fill = () => {
    while (bits <= 24) {
      let byte = 0;
      if (!hitMarker && pos < d.length) {
        byte = d[pos];
        if (byte === 0xff) {
          let nxt = d[pos + 1];
          while (nxt === 0xff) nxt = d[++pos + 1]; // fill bytes
          if (nxt === 0) pos += 2;
          else { hitMarker = true; byte = 0; }
        } else pos++;
      }
      buf = ((buf << 8) | byte) >>> 0;
      bits += 8;
    }
  };
  const getBits = (n) => {
    if (!n) return 0;
    if (bits < n) fill();
    bits -= n;
    return (buf >>> bits) & ((1 << n) - 1);
  };
  const getBit = () => getBits(1);
  const decodeHuff = (t) => {
    if (bits < 16) fill();
    const peek = (buf >>> (bits - 8)) & 255;
    const e = t.look[peek];
    if (e) {
      bits -= e >> 8;
      return e & 255;
    }
    let code = 0, l = 0;
    for (l = 1; l <= 16; l++) {
      code = (code << 1) | getBit();
      if (t.maxcode[l] >= 0 && code <= t.maxcode[l] && code >= t.mincode[l]) break;
    }
    if (l > 16) return 0; // corrupt data: libjpeg warns and returns 0
    return t.values[t.valptr[l] + code - t.mincode[l]];
  };
  const extend = (v, s) => (s && v < 1 << (s - 1) ? v - (1 << s) + 1 : v);

  const decodeBlock = (c, off) => { // baseline / sequential
    const co = c.coefs;
    const s = decodeHuff(c.dcTable);
    c.pred += s ? extend(getBits(s), s) : 0;
    co[off] = c.pred;
    for (let k = 1; k < 64;) {
      const rs = decodeHuff(c.acTable), r = rs >> 4, s2 = rs & 15;
      if (s2) {
        k += r;
        if (k > 63) break;
        co[off + ZIGZAG[k]] = extend(getBits(s2), s2);
        k++;
      } else {
        if (r < 15) break;
        k += 16;
      }
    }
  };
  const dcFirst = (c, off) => {
    const s = decodeHuff(c.dcTable);
    c.pred += s ? extend(getBits(s), s) : 0;
    c.coefs[off] = c.pred * (1 << al);
  };
  const dcRefine = (c, off) => { if (getBit()) c.coefs[off] |= 1 << al; };
  const acFirst = (c, off) => {
    if (st.eobrun > 0) { st.eobrun--; return; }
    const co = c.coefs;
    for (let k = ss; k <= se;) {
      const rs = decodeHuff(c.acTable), r = rs >> 4, s = rs & 15;
      if (s) {
        k += r;
        if (k > 63) break;
        co[off + ZIGZAG[k]] = extend(getBits(s), s) * (1 << al);
        k++;
      } else if (r < 15) {
        st.eobrun = (1 << r) - 1 + (r ? getBits(r) : 0);
        break;
      } else k += 16;
    }
  };
  const acRefine = (c, off) => { // libjpeg's decode_mcu_AC_refine
    const co = c.coefs, p1 = 1 << al, m1 = -1 << al;
    let k = ss;
    if (st.eobrun <= 0) {
      for (; k <= se;) {
        const rs = decodeHuff(c.acTable);
        let r = rs >> 4, s = rs & 15, val = 0;
        if (s) { val = getBit() ? p1 : m1; } else if (r !== 15) {
          st.eobrun = 1 << r;
          if (r) st.eobrun += getBits(r);
          break;
        }
        do {
          const z = off + ZIGZAG[k];
          if (co[z] !== 0) {
            if (getBit() && (co[z] & p1) === 0) co[z] += co[z] >= 0 ? p1 : m1;
          } else {
            if (--r < 0) break;
          }
          k++;
        } while (k <= se);
        if (s && k <= 63) co[off + ZIGZAG[k]] = val;
        k++;
      }
    }
    if (st.eobrun > 0) {
      for (; k <= se; k++) {
        const z = off + ZIGZAG[k];
        if (co[z] !== 0 && getBit() && (co[z] & p1) === 0) co[z] += co[z] >= 0 ? p1 : m1;
      }
      st.eobrun--;
    }
  };
  let fn = decodeBlock;
  if (st.progressive) fn = ss === 0 ? (ah ? dcRefine : dcFirst) : (ah ? acRefine : acFirst);

  const single = comps.length === 1;
  const total = single ? comps[0].bw * comps[0].bh : st.mcusX * st.mcusY;
  const interval = st.restart || Infinity;
  st.eobrun = 0;
  for (const c of comps) c.pred = 0;
  for (let m = 0; m < total; m++) {
    if (m > 0 && m % interval === 0) { // restart: realign to the RSTn marker, reset predictors and EOB runs
      bits = 0; buf = 0;
      hitMarker = false;
      while (pos < d.length && !(d[pos] === 0xff && d[pos + 1] >= 0xd0 && d[pos + 1] <= 0xd7)) pos++;
      pos += 2;
      st.eobrun = 0;
      for (const c of comps) c.pred = 0;
    }
    if (single) {
      const c = comps[0], by = Math.floor(m / c.bw), bx = m % c.bw;
      fn(c, (by * c.bwAlloc + bx) * 64);
    } else {
      const my = Math.floor(m / st.mcusX), mx = m % st.mcusX;
      for (const c of comps) {
        for (let v = 0; v < c.v; v++) {
          for (let h = 0; h < c.h; h++) fn(c, ((my * c.v + v) * c.bwAlloc + mx * c.h + h) * 64);
        }
      }
    }
  }
  // continue after the scan's data: the next marker
  while (pos < d.length && !(d[pos] === 0xff && d[pos + 1] !== 0 && !(d[pos + 1] >= 0xd0 && d[pos + 1] <= 0xd7))) pos++;
  return pos;
}

// --- IDCT (jidctint.c jpeg_idct_islow, jidctred.c jpeg_idct_4x4 / 2x2 / 1x1) ------------------------------------
const ws = new Int32Array(64);

function idct8(co, off, q, out, stride, o0) {
  for (let c = 0; c < 8; c++) {
    const i = off + c;
    if (!co[i + 8] && !co[i + 16] && !co[i + 24] && !co[i + 32] && !co[i + 40] && !co[i + 48] && !co[i + 56]) {
      const dc = (co[i] * q[c]) << 2;
      for (let r = 0; r < 8; r++) ws[r * 8 + c] = dc;
      continue;
    }
    let z2 = co[i + 16] * q[16 + c], z3 = co[i + 48] * q[48 + c];
    let z1 = (z2 + z3) * 4433;
    const t2 = z1 + z3 * -15137, t3 = z1 + z2 * 6270;
    z2 = co[i] * q[c];
    z3 = co[i + 32] * q[32 + c];
    const t0 = (z2 + z3) * 8192, t1 = (z2 - z3) * 8192;
    const t10 = t0 + t3, t13 = t0 - t3, t11 = t1 + t2, t12 = t1 - t2;
    let o0v = co[i + 56] * q[56 + c], o1 = co[i + 40] * q[40 + c], o2 = co[i + 24] * q[24 + c], o3 = co[i + 8] * q[8 + c];
    z1 = o0v + o3; z2 = o1 + o2; z3 = o0v + o2; let z4 = o1 + o3;
    const z5 = (z3 + z4) * 9633;
    o0v *= 2446; o1 *= 16819; o2 *= 25172; o3 *= 12299;
    z1 *= -7373; z2 *= -20995; z3 *= -16069; z4 *= -3196;
    z3 += z5; z4 += z5;
    o0v += z1 + z3; o1 += z2 + z4; o2 += z2 + z3; o3 += z1 + z4;
    ws[c] = (t10 + o3 + 1024) >> 11; ws[56 + c] = (t10 - o3 + 1024) >> 11;
    ws[8 + c] = (t11 + o2 + 1024) >> 11; ws[48 + c] = (t11 - o2 + 1024) >> 11;
    ws[16 + c] = (t12 + o1 + 1024) >> 11; ws[40 + c] = (t12 - o1 + 1024) >> 11;
    ws[24 + c] = (t13 + o0v + 1024) >> 11; ws[32 + c] = (t13 - o0v + 1024) >> 11;
  }
  for (let r = 0; r < 8; r++) {
    const w = r * 8, o = o0 + r * stride;
    if (!ws[w + 1] && !ws[w + 2] && !ws[w + 3] && !ws[w + 4] && !ws[w + 5] && !ws[w + 6] && !ws[w + 7]) {
      const v = limit((ws[w] + 16) >> 5);
      for (let c = 0; c < 8; c++) out[o + c] = v;
      continue;
    }
    let z2 = ws[w + 2], z3 = ws[w + 6];
    let z1 = (z2 + z3) * 4433;
    const t2 = z1 + z3 * -15137, t3 = z1 + z2 * 6270;
    const t0 = (ws[w] + ws[w + 4]) * 8192, t1 = (ws[w] - ws[w + 4]) * 8192;
    const t10 = t0 + t3, t13 = t0 - t3, t11 = t1 + t2, t12 = t1 - t2;
    let o0v = ws[w + 7], o1 = ws[w + 5], o2 = ws[w + 3], o3 = ws[w + 1];
    z1 = o0v + o3; z2 = o1 + o2; z3 = o0v + o2; let z4 = o1 + o3;
    const z5 = (z3 + z4) * 9633;
    o0v *= 2446; o1 *= 16819; o2 *= 25172; o3 *= 12299;
    z1 *= -7373; z2 *= -20995; z3 *= -16069; z4 *= -3196;
    z3 += z5; z4 += z5;
    o0v += z1 + z3; o1 += z2 + z4; o2 += z2 + z3; o3 += z1 + z4;
    const S = 1 << 17;
    out[o] = limit((t10 + o3 + S) >> 18); out[o + 7] = limit((t10 - o3 + S) >> 18);
    out[o + 1] = limit((t11 + o2 + S) >> 18); out[o + 6] = limit((t11 - o2 + S) >> 18);
    out[o + 2] = limit((t12 + o1 + S) >> 18); out[o + 5] = limit((t12 - o1 + S) >> 18);
    out[o + 3] = limit((t13 + o0v + S) >> 18); out[o + 4] = limit((t13 - o0v + S) >> 18);
  }
}

function idct4(co, off, q, out, stride, o0) {
  for (let c = 0; c < 8; c++) {
    if (c === 4) continue;
    const i = off + c;
    if (!co[i + 8] && !co[i + 16] && !co[i + 24] && !co[i + 40] && !co[i + 48] && !co[i + 56]) {
      const dc = (co[i] * q[c]) << 2;
      ws[c] = ws[8 + c] = ws[16 + c] = ws[24 + c] = dc;
      continue;
    }
    let t0 = (co[i] * q[c]) * 16384;
    const t2 = co[i + 16] * q[16 + c] * 15137 + co[i + 48] * q[48 + c] * -6270;
    const t10 = t0 + t2, t12 = t0 - t2;
    const z1 = co[i + 56] * q[56 + c], z2 = co[i + 40] * q[40 + c], z3 = co[i + 24] * q[24 + c], z4 = co[i + 8] * q[8 + c];
    t0 = z1 * -1730 + z2 * 11893 + z3 * -17799 + z4 * 8697;
    const t2b = z1 * -4176 + z2 * -4926 + z3 * 7373 + z4 * 20995;
    ws[c] = (t10 + t2b + 2048) >> 12; ws[24 + c] = (t10 - t2b + 2048) >> 12;
    ws[8 + c] = (t12 + t0 + 2048) >> 12; ws[16 + c] = (t12 - t0 + 2048) >> 12;
  }
  for (let r = 0; r < 4; r++) {
    const w = r * 8, o = o0 + r * stride;
    if (!ws[w + 1] && !ws[w + 2] && !ws[w + 3] && !ws[w + 5] && !ws[w + 6] && !ws[w + 7]) {
      const v = limit((ws[w] + 16) >> 5);
      out[o] = out[o + 1] = out[o + 2] = out[o + 3] = v;
      continue;
    }
    let t0 = ws[w] * 16384;
    const t2 = ws[w + 2] * 15137 + ws[w + 6] * -6270;
    const t10 = t0 + t2, t12 = t0 - t2;
    const z1 = ws[w + 7], z2 = ws[w + 5], z3 = ws[w + 3], z4 = ws[w + 1];
    t0 = z1 * -1730 + z2 * 11893 + z3 * -17799 + z4 * 8697;
    const t2b = z1 * -4176 + z2 * -4926 + z3 * 7373 + z4 * 20995;
    const S = 1 << 18;
    out[o] = limit((t10 + t2b + S) >> 19); out[o + 3] = limit((t10 - t2b + S) >> 19);
    out[o + 1] = limit((t12 + t0 + S) >> 19); out[o + 2] = limit((t12 - t0 + S) >> 19);
  }
}

function idct2(co, off, q, out, stride, o0) {
  for (const c of [0, 1, 3, 5, 7]) {
    const i = off + c;
    if (!co[i + 8] && !co[i + 24] && !co[i + 40] && !co[i + 56]) {
      ws[c] = ws[8 + c] = (co[i] * q[c]) << 2;
      continue;
    }
    const t10 = co[i] * q[c] * 32768;
    const t0 = co[i + 56] * q[56 + c] * -5906 + co[i + 40] * q[40 + c] * 6967 + co[i + 24] * q[24 + c] * -10426
      + co[i + 8] * q[8 + c] * 29692;
    ws[c] = (t10 + t0 + 4096) >> 13; ws[8 + c] = (t10 - t0 + 4096) >> 13;
  }
  for (let r = 0; r < 2; r++) {
    const w = r * 8, o = o0 + r * stride;
    if (!ws[w + 1] && !ws[w + 3] && !ws[w + 5] && !ws[w + 7]) {
      out[o] = out[o + 1] = limit((ws[w] + 16) >> 5);
      continue;
    }
    const t10 = ws[w] * 32768;
    const t0 = ws[w + 7] * -5906 + ws[w + 5] * 6967 + ws[w + 3] * -10426 + ws[w + 1] * 29692;
    out[o] = limit((t10 + t0 + (1 << 19)) >> 20); out[o + 1] = limit((t10 - t0 + (1 << 19)) >> 20);
  }
}

function idct1(co, off, q, out, stride, o0) {
  out[o0] = limit((co[off] * q[0] + 4) >> 3);
}

const IDCT = {8: idct8, 4: idct4, 2: idct2, 1: idct1};

// --- output: IDCT per component, upsampling, colour conversion ------------------------------------------------
function render(st, minSize) {
  const {width, height, hmax, vmax, components: comps} = st;
  const outW = Math.ceil((width * minSize) / 8), outH = Math.ceil((height * minSize) / 8);
  const planes = comps.map((c) => {
    let s = minSize; // jdmaster: scale chroma up through the IDCT rather than by upsampling
    while (s < 8 && (hmax * minSize) % (c.h * s * 2) === 0 && (vmax * minSize) % (c.v * s * 2) === 0) s *= 2;
    const q = st.qt[c.tq];
    if (!q) throw new Error("JPEG component has no quantisation table");
    const pw = c.bwAlloc * s, ph = c.bhAlloc * s, plane = new Uint8Array(pw * ph), idct = IDCT[s];
    for (let by = 0; by < c.bhAlloc; by++) {
      for (let bx = 0; bx < c.bwAlloc; bx++) {
        idct(c.coefs, (by * c.bwAlloc + bx) * 64, q, plane, pw, by * s * pw + bx * s);
      }
    }
    const dw = Math.ceil((width * c.h * s) / (hmax * 8)), dh = Math.ceil((height * c.v * s) / (vmax * 8));
    return upsample(plane, pw, dw, dh, (c.h * s) / minSize, (c.v * s) / minSize, hmax, vmax, minSize > 1, outW, outH);
  });
  if (comps.length === 1) return {width: outW, height: outH, channels: 1, data: planes[0]};
  const ids = comps.map((c) => c.id);
  // libjpeg's guess (jdapimin default_decompress_parms): JFIF means YCbCr, then Adobe's transform, then the ids
  const rgb = !st.jfif && (st.adobe !== null ? st.adobe === 0 : ids[0] === 82 && ids[1] === 71 && ids[2] === 66);
  const n = outW * outH, out = new Uint8Array(n * 3), [y, cb, cr] = planes;
  if (rgb) {
    for (let i = 0; i < n; i++) { out[3 * i] = y[i]; out[3 * i + 1] = cb[i]; out[3 * i + 2] = cr[i]; }
  } else {
    for (let i = 0; i < n; i++) {
      const Y = y[i], b = cb[i], r = cr[i];
      out[3 * i] = clamp8(Y + CR_R[r]);
      out[3 * i + 1] = clamp8(Y + ((CB_G[b] + CR_G[r]) >> 16));
      out[3 * i + 2] = clamp8(Y + CB_B[b]);
    }
  }
  return {width: outW, height: outH, channels: 3, data: out};
}

// jdcolor.c build_ycc_rgb_table, SCALEBITS 16
const CR_R = new Int32Array(256), CB_B = new Int32Array(256), CR_G = new Float64Array(256), CB_G = new Float64Array(256);
{
  const FIX = (x) => Math.floor(x * 65536 + 0.5), HALF = 32768;
  for (let i = 0; i < 256; i++) {
    const x = i - 128;
    CR_R[i] = Math.floor((FIX(1.402) * x + HALF) / 65536);
    CB_B[i] = Math.floor((FIX(1.772) * x + HALF) / 65536);
    CR_G[i] = -FIX(0.71414) * x;
    CB_G[i] = -FIX(0.34414) * x + HALF;
  }
}

function upsample(plane, pw, dw, dh, hIn, vIn, hOut, vOut, fancy, outW, outH) {
  const out = new Uint8Array(outW * outH);
  const px = (x, y) => plane[Math.min(Math.max(y, 0), dh - 1) * pw + Math.min(Math.max(x, 0), dw - 1)];
  if (hIn === hOut && vIn === vOut) {
    for (let y = 0; y < outH; y++) out.set(plane.subarray(y * pw, y * pw + outW), y * outW);
  } else if (hIn * 2 === hOut && vIn === vOut && fancy && dw > 2) { // h2v1 fancy
    for (let y = 0; y < outH; y++) {
      for (let x = 0; x < outW; x++) {
        const i = x >> 1, v3 = px(i, y) * 3;
        out[y * outW + x] = x & 1 ? (v3 + px(i + 1, y) + 2) >> 2 : (v3 + px(i - 1, y) + 1) >> 2;
      }
    }
  } else if (hIn === hOut && vIn * 2 === vOut && fancy) { // h1v2 fancy
    for (let y = 0; y < outH; y++) {
      const j = y >> 1, up = !(y & 1);
      for (let x = 0; x < outW; x++) {
        out[y * outW + x] = (px(x, j) * 3 + px(x, up ? j - 1 : j + 1) + (up ? 1 : 2)) >> 2;
      }
    }
  } else if (hIn * 2 === hOut && vIn * 2 === vOut && fancy && dw > 2) { // h2v2 fancy
    for (let y = 0; y < outH; y++) {
      const j = y >> 1, j2 = y & 1 ? j + 1 : j - 1;
      const col = (i) => px(i, j) * 3 + px(i, j2);
      for (let x = 0; x < outW; x++) {
        const i = x >> 1, t3 = col(i) * 3;
        out[y * outW + x] = x & 1 ? (t3 + col(i + 1) + 7) >> 4 : (t3 + col(i - 1) + 8) >> 4;
      }
    }
  } else if (hOut % hIn === 0 && vOut % vIn === 0) { // replication (int_upsample, h2v1/h2v2 box)
    const he = hOut / hIn, ve = vOut / vIn;
    for (let y = 0; y < outH; y++) {
      for (let x = 0; x < outW; x++) out[y * outW + x] = plane[Math.floor(y / ve) * pw + Math.floor(x / he)];
    }
  } else {
    throw new JpegUnsupportedError("JPEG with fractional sampling factors is not supported");
  }
  return out;
}
