// A PNG decoder that gives the pixels Pillow gives (and so vitlab_edge): grey stays 1 channel, palette images
// expand through PLTE (with tRNS alpha), a tRNS colour key on grey/RGB images is ignored (Pillow keeps it as
// info only), 16-bit RGB(A) keeps the high byte and 16-bit grey is rescaled like vitlab_edge's I;16 path. Browsers'
// canvases premultiply alpha and may colour-manage; this keeps PNG input identical everywhere. `inflate` is the
// platform's zlib (Node's zlib.inflateSync, or DecompressionStream("deflate") in a browser).

export const isPng = (b) => b.length > 8 && b[0] === 0x89 && b[1] === 0x50 && b[2] === 0x4e && b[3] === 0x47;

/**
 * @param {Uint8Array} bytes
 * @param {(data: Uint8Array) => Uint8Array | Promise<Uint8Array>} inflate  zlib stream -> raw bytes
 * @returns {Promise<{width:number,height:number,channels:number,data:Uint8Array,orientation:number}>}
 */
export async function decodePng(bytes, inflate) {
  const d = bytes, dv = new DataView(d.buffer, d.byteOffset, d.byteLength);
  if (!isPng(d)) throw new Error("not a PNG file");
  let pos = 8, hdr = null, palette = null, trns = null, orientation = 1;
  const idat = [];
  while (pos + 8 <= d.length) {
    const len = dv.getUint32(pos), type = String.fromCharCode(...d.subarray(pos + 4, pos + 8));
    const body = d.subarray(pos + 8, pos + 8 + len);
    if (pos + 12 + len > d.length) throw new Error("image file is truncated");
    if (type === "IHDR") {
      hdr = {width: dv.getUint32(pos + 8), height: dv.getUint32(pos + 12), depth: body[8], color: body[9],
             interlace: body[12]};
    } else if (type === "PLTE") palette = body;
    else if (type === "tRNS") trns = body;
    else if (type === "IDAT") idat.push(body);
    else if (type === "eXIf") orientation = tiffOrientation(body) || 1;
    else if (type === "IEND") break;
    pos += 12 + len;
  }
  if (!hdr || !idat.length) throw new Error("PNG without IHDR or IDAT");
  const joined = new Uint8Array(idat.reduce((n, b) => n + b.length, 0));
  let o = 0;
  for (const b of idat) { joined.set(b, o); o += b.length; }
  const raw = await inflate(joined);
  const {width, height, depth, color, interlace} = hdr;
  const spp = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color];
  if (!spp) throw new Error(`PNG colour type ${color} is not valid`);
  const samples = new Uint16Array(width * height * spp); // unpacked samples at the file's bit depth
  const passes = interlace ? [[0, 0, 8, 8], [4, 0, 8, 8], [0, 4, 4, 8], [2, 0, 4, 4], [0, 2, 2, 4], [1, 0, 2, 2],
    [0, 1, 1, 2]] : [[0, 0, 1, 1]];
  const bpp = Math.max(1, (spp * depth) >> 3);
  let rp = 0;
  for (const [x0, y0, dx, dy] of passes) {
    const pw = Math.ceil((width - x0) / dx), ph = Math.ceil((height - y0) / dy);
    if (pw <= 0 || ph <= 0) continue;
    const stride = Math.ceil((pw * spp * depth) / 8);
    let prev = new Uint8Array(stride);
    for (let y = 0; y < ph; y++) {
      const filter = raw[rp++], line = raw.slice(rp, rp + stride);
      rp += stride;
      unfilter(filter, line, prev, bpp);
      for (let x = 0; x < pw; x++) {
        const base = ((y0 + y * dy) * width + x0 + x * dx) * spp;
        for (let k = 0; k < spp; k++) samples[base + k] = sample(line, x * spp + k, depth);
      }
      prev = line;
    }
  }
  return {...toPillow(samples, width, height, depth, color, spp, palette, trns), orientation};
}

function sample(line, i, depth) {
  if (depth === 8) return line[i];
  if (depth === 16) return (line[2 * i] << 8) | line[2 * i + 1];
  const perByte = 8 / depth, byte = line[Math.floor(i / perByte)], shift = 8 - depth * (1 + (i % perByte));
  return (byte >> shift) & ((1 << depth) - 1);
}

function unfilter(f, line, prev, bpp) {
  for (let i = 0; i < line.length; i++) {
    const a = i >= bpp ? line[i - bpp] : 0, b = prev[i], c = i >= bpp ? prev[i - bpp] : 0;
    let v = line[i];
    if (f === 1) v += a;
    else if (f === 2) v += b;
    else if (f === 3) v += (a + b) >> 1;
    else if (f === 4) {
      const p = a + b - c, pa = Math.abs(p - a), pb = Math.abs(p - b), pc = Math.abs(p - c);
      v += pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
    } else if (f !== 0) throw new Error(`bad PNG filter ${f}`);
    line[i] = v & 255;
  }
}

function toPillow(s, width, height, depth, color, spp, palette, trns) {
  const n = width * height;
  if (color === 3) { // palette -> RGB, or RGBA when tRNS gives alpha (Pillow: convert("RGBA"))
    const ch = trns ? 4 : 3, out = new Uint8Array(n * ch);
    for (let i = 0; i < n; i++) {
      const p = s[i];
      for (let k = 0; k < 3; k++) out[i * ch + k] = palette && 3 * p + k < palette.length ? palette[3 * p + k] : 0;
      if (trns) out[i * ch + 3] = p < trns.length ? trns[p] : 255;
    }
    return {width, height, channels: ch, data: out};
  }
  const out = new Uint8Array(n * spp);
  if (depth === 16 && color === 0) { // Pillow I;16 -> vitlab_edge._to_8bit: v / 65535 * 255, + 0.5, clipped
    for (let i = 0; i < n; i++) out[i] = Math.min(255, Math.floor((s[i] / 65535.0) * 255.0 + 0.5));
  } else if (depth === 16) {
    for (let i = 0; i < s.length; i++) out[i] = s[i] >> 8;
  } else if (depth < 8) { // grey 1/2/4 bit: Pillow's L;1 (mode "1" -> L), L;2, L;4 scale to 0..255
    const m = 255 / ((1 << depth) - 1);
    for (let i = 0; i < s.length; i++) out[i] = s[i] * m;
  } else out.set(s);
  return {width, height, channels: spp, data: out};
}

/** EXIF orientation from a TIFF block (PNG eXIf chunk); 0 when absent. */
export function tiffOrientation(t) {
  if (t.length < 8) return 0;
  const le = t[0] === 0x49;
  const r16 = (i) => (le ? t[i] | (t[i + 1] << 8) : (t[i] << 8) | t[i + 1]);
  const r32 = (i) => (le ? (t[i] | (t[i + 1] << 8) | (t[i + 2] << 16)) + t[i + 3] * 2 ** 24
    : t[i] * 2 ** 24 + ((t[i + 1] << 16) | (t[i + 2] << 8) | t[i + 3]));
  const ifd = r32(4);
  if (ifd + 2 > t.length) return 0;
  for (let i = 0, n = r16(ifd); i < n; i++) {
    const e = ifd + 2 + 12 * i;
    if (e + 12 > t.length) break;
    if (r16(e) === 0x0112) { const v = r16(e + 8); return v >= 1 && v <= 8 ? v : 0; }
  }
  return 0;
}
