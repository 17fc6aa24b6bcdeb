/**
 * Concat along any axis. The shipped wasm kernel copies one `subarray` view per input per outer
 * index: for the U-Net's channel concats (skips) and the axis-2 concat of nearest-neighbour
 * upsampling (models/layers.ts) that is hundreds of thousands of tiny typed-array views per tile,
 * profiled at 15% of a streaming denoise. Viewed as [outer, inner_i] per input, it is one strided
 * copy per input: short rows (a few channels) by a plain loop, longer rows by copyWithin on the
 * whole heap (no view per row). The mirror of split.ts (the gradient of a channel concat).
 */
import type * as tf from '@tensorflow/tfjs-core';
import { withScope, type KernelArgs } from './wasm-scope.js';

/**
 * From this many floats per row on, copyWithin beats a plain loop (CPU time of a [16,64,64,C] pair,
 * 1 thread: C=8 loop 2.3 / copyWithin 3.1 ms, C=16 5.6 / 4.6, C=32 11.2 / 5.7, C=64 20.6 / 8.3;
 * `set` of a subarray per row: 8.9-13.5).
 */
export const BLOCK_COPY_MIN_ROW = 16;

/**
 * Copies `rows` rows of `width` floats within one heap: row r from sourceStart + r * sourceStride to
 * targetStart + r * targetStride (float indices into `heap`; the regions must not overlap).
 */
export function copyStridedRows(heap: Float32Array, sourceStart: number, sourceStride: number, targetStart: number, targetStride: number, rows: number, width: number): void {
  if (width >= BLOCK_COPY_MIN_ROW) {
    for (let r = 0, s = sourceStart, t = targetStart; r < rows; r++, s += sourceStride, t += targetStride) heap.copyWithin(t, s, s + width);
    return;
  }
  for (let r = 0, s = sourceStart, t = targetStart; r < rows; r++, s += sourceStride, t += targetStride) {
    for (let c = 0; c < width; c++) heap[t + c] = heap[s + c];
  }
}

export function concatFast(args: KernelArgs): tf.TensorInfo | null {
  const inputs = Object.values(args.inputs).filter((t): t is tf.TensorInfo => t !== undefined);
  if (inputs.length < 2) return null;
  const rank = inputs[0].shape.length;
  if (rank < 1) return null;
  const attrs = args.attrs as unknown as tf.ConcatAttrs;
  const axis = attrs.axis < 0 ? attrs.axis + rank : attrs.axis;
  if (!(axis >= 0 && axis < rank)) return null;
  for (const t of inputs) {
    if (t.dtype !== 'float32' || t.shape.length !== rank || t.shape.some((n, k) => k !== axis && n !== inputs[0].shape[k])) return null;
  }
  const outer = inputs[0].shape.slice(0, axis).reduce((a, b) => a * b, 1);
  const rowOf = (shape: readonly number[]): number => shape.slice(axis).reduce((a, b) => a * b, 1);
  const rows = inputs.map((t) => rowOf(t.shape));
  const outRow = rows.reduce((a, b) => a + b, 0);
  if (outer === 0 || rows.some((w) => w === 0)) return null;
  const outShape = [...inputs[0].shape];
  outShape[axis] = inputs.reduce((n, t) => n + t.shape[axis], 0);
  return withScope(args.backend, (scope) => {
    // Allocate before taking heap views: an allocation may grow (and move) the heap.
    const out = scope.keep(scope.output(outShape));
    const target = scope.heap(out);
    const heap = new Float32Array(target.buffer);
    const targetStart = target.byteOffset / 4;
    let offset = 0;
    inputs.forEach((input, i) => {
      const width = rows[i];
      copyStridedRows(heap, scope.heap(input).byteOffset / 4, width, targetStart + offset, outRow, outer, width);
      offset += width;
    });
    return out;
  });
}
