/**
 * SplitV along the last (channel) axis: the gradient of every U-Net skip concatenation. The
 * shipped wasm kernel slices a rank-5 tensor through its generic path (about 1 s for a
 * 4x8x32x32x32 split, more than all the 3D convolutions of a training step); viewed as [rows, C]
 * it is one strided copy per output.
 */
import type * as tf from '@tensorflow/tfjs-core';
import { inputsOf, withScope, type KernelArgs } from './wasm-scope.js';

export function splitVLastAxisFast(args: KernelArgs): tf.TensorInfo[] | null {
  const { x } = inputsOf(args.inputs, 'x');
  const attrs = args.attrs as unknown as tf.SplitVAttrs;
  const rank = x.shape.length;
  const axis = attrs.axis < 0 ? attrs.axis + rank : attrs.axis;
  if (rank < 2 || axis !== rank - 1 || x.dtype !== 'float32') return null;
  const channels = x.shape[axis];
  let sizes: number[];
  if (typeof attrs.numOrSizeSplits === 'number') {
    if (channels % attrs.numOrSizeSplits !== 0) return null;
    sizes = Array<number>(attrs.numOrSizeSplits).fill(channels / attrs.numOrSizeSplits);
  } else {
    sizes = [...attrs.numOrSizeSplits];
    const unknown = sizes.indexOf(-1);
    if (unknown >= 0) sizes[unknown] = channels - sizes.reduce((a, s) => (s === -1 ? a : a + s), 0);
  }
  const rows = x.shape.slice(0, -1).reduce((a, b) => a * b, 1);
  return withScope(args.backend, (scope) => {
    // Allocate every output before taking heap views: an allocation may grow (and move) the heap.
    const outputs = sizes.map((size) => scope.keep(scope.output([...x.shape.slice(0, -1), size])));
    const source = scope.heap(x);
    let offset = 0;
    outputs.forEach((out, i) => {
      const width = sizes[i];
      const target = scope.heap(out);
      for (let r = 0, s = offset, t = 0; r < rows; r++, s += channels, t += width) {
        for (let c = 0; c < width; c++) target[t + c] = source[s + c];
      }
      offset += width;
    });
    return outputs;
  });
}
