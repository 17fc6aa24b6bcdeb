/**
 * SplitV along any axis: the gradient of every U-Net skip concatenation (channel axis) and of the
 * axis-2 concat of nearest-neighbour upsampling (models/layers.ts). The shipped wasm kernel slices
 * through its generic path (about 1 s for a 4x8x32x32x32 channel split, more than all the 3D
 * convolutions of a training step; 15-30 ms for each upsampling gradient of the reference 2D U-Net);
 * viewed as [outer, axis x inner] it is one strided copy per output: short rows by a plain loop,
 * long rows by copyWithin on the heap (no typed-array view per row). The mirror of concat.ts.
 */
import type * as tf from '@tensorflow/tfjs-core';
import { copyStridedRows } from './concat.js';
import { inputsOf, withScope, type KernelArgs } from './wasm-scope.js';

export function splitVFast(args: KernelArgs): tf.TensorInfo[] | null {
  const { x } = inputsOf(args.inputs, 'x');
  const attrs = args.attrs as unknown as tf.SplitVAttrs;
  const rank = x.shape.length;
  const axis = attrs.axis < 0 ? attrs.axis + rank : attrs.axis;
  if (rank < 1 || !(axis >= 0 && axis < rank) || x.dtype !== 'float32') return null;
  const length = x.shape[axis];
  let sizes: number[];
  if (typeof attrs.numOrSizeSplits === 'number') {
    if (length % attrs.numOrSizeSplits !== 0) return null;
    sizes = Array<number>(attrs.numOrSizeSplits).fill(length / attrs.numOrSizeSplits);
  } else {
    sizes = [...attrs.numOrSizeSplits];
    const unknown = sizes.indexOf(-1);
    if (unknown >= 0) sizes[unknown] = length - sizes.reduce((a, s) => (s === -1 ? a : a + s), 0);
  }
  if (sizes.some((size) => !(size >= 0)) || sizes.reduce((a, b) => a + b, 0) !== length) return null;
  const outer = x.shape.slice(0, axis).reduce((a, b) => a * b, 1);
  const inner = x.shape.slice(axis + 1).reduce((a, b) => a * b, 1);
  const sourceRow = length * inner;
  return withScope(args.backend, (scope) => {
    // Allocate every output before taking heap views: an allocation may grow (and move) the heap.
    const outputs = sizes.map((size) => {
      const shape = [...x.shape];
      shape[axis] = size;
      return scope.keep(scope.output(shape));
    });
    const source = scope.heap(x);
    const heap = new Float32Array(source.buffer);
    const sourceStart = source.byteOffset / 4;
    let offset = 0;
    outputs.forEach((out, i) => {
      const width = sizes[i] * inner;
      copyStridedRows(heap, sourceStart + offset, sourceRow, scope.heap(out).byteOffset / 4, width, outer, width);
      offset += width;
    });
    return outputs;
  });
}
