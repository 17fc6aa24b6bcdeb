/**
 * Concat along any axis. The shipped wasm kernel copies one `subarray` view per input per outer
 * index: for the U-Net's channel concats (skips) and the axis-2 concat of nearest-neighbour
 * upsampling (models/layers.ts) that is hundreds of thousands of tiny typed-array views per tile,
 * profiled at 15% of a streaming denoise. Viewed as [outer, inner_i] per input, it is one strided
 * copy per input: short rows (a few channels) by a plain loop, long rows by `set`. The mirror of
 * split.ts (the gradient of a channel concat).
 */
import type * as tf from '@tensorflow/tfjs-core';
import { withScope, type KernelArgs } from './wasm-scope.js';

/** Below this many floats per row a loop beats creating a view for `set`. */
const SET_MIN_ROW = 64;

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
    let offset = 0;
    inputs.forEach((input, i) => {
      const width = rows[i];
      const source = scope.heap(input);
      if (width >= SET_MIN_ROW) {
        for (let r = 0, s = 0, t = offset; r < outer; r++, s += width, t += outRow) target.set(source.subarray(s, s + width), t);
      } else {
        for (let r = 0, s = 0, t = offset; r < outer; r++, s += width, t += outRow) {
          for (let c = 0; c < width; c++) target[t + c] = source[s + c];
        }
      }
      offset += width;
    });
    return out;
  });
}
