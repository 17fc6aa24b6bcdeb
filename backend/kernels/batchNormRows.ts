/**
 * The four per-channel loops of the batch-norm kernels (batchNorm.ts), each over a range of rows of
 * a [rows, C] array: channel sums, normalisation, gradient sums and the input gradient.
 */

// The four loops below run on a range of rows, on this thread or on the helper thread
// (heapHelper.ts, which calls them from their source text: they must stay self-contained).
// Arrays are addressed by offsets (`...At`, in elements), so the helper can pass the whole wasm
// heap. Four rows per pass over the channels: the per-channel accumulators and coefficients are
// loaded once per four values, 2-3x faster than one row per pass in V8.

/** scratch[sumAt + c] += x - shift, scratch[sumSqAt + c] += (x - shift)^2 over rows [r0, r1). */
export function channelSumsRange(x: Float32Array, scratch: Float64Array, xAt: number, channels: number, r0: number, r1: number, shiftAt: number, sumAt: number, sumSqAt: number): void {
  const end = xAt + r1 * channels;
  const block = 4 * channels;
  let base = xAt + r0 * channels;
  for (; base + block <= end; base += block) {
    const q1 = base + channels;
    const q2 = q1 + channels;
    const q3 = q2 + channels;
    for (let c = 0; c < channels; c++) {
      const s = scratch[shiftAt + c];
      const d0 = x[base + c] - s;
      const d1 = x[q1 + c] - s;
      const d2 = x[q2 + c] - s;
      const d3 = x[q3 + c] - s;
      scratch[sumAt + c] += d0 + d1 + (d2 + d3);
      scratch[sumSqAt + c] += d0 * d0 + d1 * d1 + (d2 * d2 + d3 * d3);
    }
  }
  for (; base < end; base += channels) {
    for (let c = 0; c < channels; c++) {
      const d = x[base + c] - scratch[shiftAt + c];
      scratch[sumAt + c] += d;
      scratch[sumSqAt + c] += d * d;
    }
  }
}

/** y = (x - mean) * scale + offset over rows [r0, r1), coefficients from the scratch. */
export function normaliseRange(x: Float32Array, y: Float32Array, scratch: Float64Array, xAt: number, yAt: number, channels: number, r0: number, r1: number, meanAt: number, scaleAt: number, offsetAt: number): void {
  const block = 4 * channels;
  const rows = r1 - r0;
  let i = r0 * channels;
  const blockEnd = i + Math.floor(rows / 4) * block;
  const end = r1 * channels;
  for (; i < blockEnd; i += block) {
    const a0 = xAt + i;
    const b0 = yAt + i;
    for (let c = 0; c < channels; c++) {
      const m = scratch[meanAt + c];
      const s = scratch[scaleAt + c];
      const o = scratch[offsetAt + c];
      y[b0 + c] = (x[a0 + c] - m) * s + o;
      y[b0 + channels + c] = (x[a0 + channels + c] - m) * s + o;
      y[b0 + 2 * channels + c] = (x[a0 + 2 * channels + c] - m) * s + o;
      y[b0 + 3 * channels + c] = (x[a0 + 3 * channels + c] - m) * s + o;
    }
  }
  for (; i < end; i += channels) {
    for (let c = 0; c < channels; c++) y[yAt + i + c] = (x[xAt + i + c] - scratch[meanAt + c]) * scratch[scaleAt + c] + scratch[offsetAt + c];
  }
}

/** scratch[sumDyAt + c] += dy, scratch[sumDyCentredAt + c] += dy * (x - mean) over rows [r0, r1). */
export function gradientSumsRange(dy: Float32Array, x: Float32Array, scratch: Float64Array, dyAt: number, xAt: number, channels: number, r0: number, r1: number, meanAt: number, sumDyAt: number, sumDyCentredAt: number): void {
  const block = 4 * channels;
  let i = r0 * channels;
  const blockEnd = i + Math.floor((r1 - r0) / 4) * block;
  const end = r1 * channels;
  for (; i < blockEnd; i += block) {
    const g0 = dyAt + i;
    const x0 = xAt + i;
    for (let c = 0; c < channels; c++) {
      const m = scratch[meanAt + c];
      const v0 = dy[g0 + c];
      const v1 = dy[g0 + channels + c];
      const v2 = dy[g0 + 2 * channels + c];
      const v3 = dy[g0 + 3 * channels + c];
      scratch[sumDyAt + c] += v0 + v1 + (v2 + v3);
      scratch[sumDyCentredAt + c] +=
        v0 * (x[x0 + c] - m) + v1 * (x[x0 + channels + c] - m) + (v2 * (x[x0 + 2 * channels + c] - m) + v3 * (x[x0 + 3 * channels + c] - m));
    }
  }
  for (; i < end; i += channels) {
    for (let c = 0; c < channels; c++) {
      const v = dy[dyAt + i + c];
      scratch[sumDyAt + c] += v;
      scratch[sumDyCentredAt + c] += v * (x[xAt + i + c] - scratch[meanAt + c]);
    }
  }
}

/** dx = a * (dy - b - (x - mean) * k) over rows [r0, r1), coefficients from the scratch. */
export function inputGradientRange(
  dy: Float32Array,
  x: Float32Array,
  dx: Float32Array,
  scratch: Float64Array,
  dyAt: number,
  xAt: number,
  dxAt: number,
  channels: number,
  r0: number,
  r1: number,
  meanAt: number,
  aAt: number,
  bAt: number,
  kAt: number,
): void {
  const block = 4 * channels;
  let i = r0 * channels;
  const blockEnd = i + Math.floor((r1 - r0) / 4) * block;
  const end = r1 * channels;
  for (; i < blockEnd; i += block) {
    const g0 = dyAt + i;
    const x0 = xAt + i;
    const d0 = dxAt + i;
    for (let c = 0; c < channels; c++) {
      const m = scratch[meanAt + c];
      const a = scratch[aAt + c];
      const b = scratch[bAt + c];
      const k = scratch[kAt + c];
      dx[d0 + c] = a * (dy[g0 + c] - b - (x[x0 + c] - m) * k);
      dx[d0 + channels + c] = a * (dy[g0 + channels + c] - b - (x[x0 + channels + c] - m) * k);
      dx[d0 + 2 * channels + c] = a * (dy[g0 + 2 * channels + c] - b - (x[x0 + 2 * channels + c] - m) * k);
      dx[d0 + 3 * channels + c] = a * (dy[g0 + 3 * channels + c] - b - (x[x0 + 3 * channels + c] - m) * k);
    }
  }
  for (; i < end; i += channels) {
    for (let c = 0; c < channels; c++) {
      dx[dxAt + i + c] = scratch[aAt + c] * (dy[dyAt + i + c] - scratch[bAt + c] - (x[xAt + i + c] - scratch[meanAt + c]) * scratch[kAt + c]);
    }
  }
}
