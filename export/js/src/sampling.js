// The sampling loop of vitlab's generators (vitlab_edge/sampling.py) in float32 arithmetic, step for step: the
// same noise, labels, steps, guidance and method give the same images as the numpy loop. numpy's RNG is not
// reproduced: pass the noise (e.g. numpy.random.default_rng(seed).standard_normal(...) saved by Python), or let
// `gaussianNoise` draw some (a seeded, JavaScript-only stream).

export const METHODS = ["euler", "heun"];
const f32 = Math.fround;

/** numpy.rint: round half to even. */
const rint = (x) => { const r = Math.round(x); return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r; };

/** Model space [N, C, H, W] float32 in [-1, 1] -> uint8 images [N, H, W, C] (vitlab_edge.sampling.to_uint8). */
export function toUint8(x, [n, c, h, w]) {
  const out = new Uint8Array(n * c * h * w);
  for (let i = 0; i < n; i++) {
    for (let k = 0; k < c; k++) {
      for (let p = 0; p < h * w; p++) {
        const v = rint(f32(f32(x[(i * c + k) * h * w + p] + 1.0) * 127.5));
        out[(i * h * w + p) * c + k] = v < 0 ? 0 : v > 255 ? 255 : v;
      }
    }
  }
  return out;
}

/** Standard-normal float32 noise from a seeded xorshift128+ / Box-Muller stream (NOT numpy's generator). */
export function gaussianNoise(count, seed = 0) {
  let s0 = (seed ^ 0x9e3779b9) >>> 0 || 1, s1 = (seed * 2654435761) >>> 0 || 2;
  const uniform = () => {
    let a = s0, b = s1;
    s0 = b;
    a ^= a << 23; a ^= a >>> 17; a ^= b ^ (b >>> 26);
    s1 = a >>> 0;
    return ((s0 + s1) >>> 0) / 4294967296 + 1 / 8589934592;
  };
  const out = new Float32Array(count);
  for (let i = 0; i < count; i += 2) {
    const r = Math.sqrt(-2 * Math.log(uniform())), t = 2 * Math.PI * uniform();
    out[i] = r * Math.cos(t);
    if (i + 1 < count) out[i + 1] = r * Math.sin(t);
  }
  return out;
}

/**
 * Images for `labels` (class ids) as uint8 [N, H, W, C]; `step(x, t, y, g)` is one guided denoiser call
 * (Float32Array x [n*C*H*W], Float32Array t [n], BigInt64Array y [n], Float32Array g [n]) -> Promise<Float32Array v>.
 * `noise`: float32 [N*C*H*W], the initial x at t = 1. `onStep(done, total)` reports progress.
 */
export async function sample(step, labels, [c, h, w], noise, {steps = 20, guidance = 2.0, method = "euler",
  batchSize = 256, onStep = null} = {}) {
  if (steps < 1 || !METHODS.includes(method)) {
    throw new Error(`steps must be >= 1 and method one of ${METHODS}, got ${steps}, '${method}'`);
  }
  const n = labels.length, per = c * h * w;
  if (noise.length !== n * per) throw new Error(`noise must hold ${n}x${c}x${h}x${w} values, got ${noise.length}`);
  const ts = new Float32Array(steps + 1), delta = (0.0 - 1.0) / steps; // numpy.linspace(1, 0, steps + 1) in float32
  for (let i = 0; i <= steps; i++) ts[i] = i * delta + 1.0;
  ts[steps] = 0.0;
  const out = new Uint8Array(n * per), total = n * (steps * (method === "heun" ? 2 : 1) - (method === "heun" ? 1 : 0));
  let done = 0;
  for (let start = 0; start < n; start += batchSize) {
    const m = Math.min(batchSize, n - start);
    let x = Float32Array.from(noise.subarray(start * per, (start + m) * per));
    const y = BigInt64Array.from(labels.slice(start, start + m), (v) => BigInt(v));
    const g = new Float32Array(m).fill(guidance);
    for (let i = 0; i < steps; i++) {
      const dt = f32(ts[i + 1] - ts[i]);
      let v = await step(x, new Float32Array(m).fill(ts[i]), y, g);
      if (method === "heun" && i < steps - 1) {
        const xe = new Float32Array(x.length);
        for (let j = 0; j < x.length; j++) xe[j] = x[j] + f32(dt * v[j]);
        const v2 = await step(xe, new Float32Array(m).fill(ts[i + 1]), y, g);
        const avg = new Float32Array(v.length);
        for (let j = 0; j < v.length; j++) avg[j] = f32(v[j] + v2[j]) / 2;
        v = avg;
        done += m;
      }
      const nx = new Float32Array(x.length);
      for (let j = 0; j < x.length; j++) nx[j] = x[j] + f32(dt * v[j]);
      x = nx;
      done += m;
      if (onStep) onStep(done, total);
    }
    out.set(toUint8(x, [m, c, h, w]), start * per);
  }
  return out;
}
