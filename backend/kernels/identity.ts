/**
 * Identity on wasm without a copy. tfjs's engine clones every tensor it saves for the backward
 * pass through the Identity kernel; the shipped wasm kernel copies the data (a malloc and a
 * memcpy per saved tensor, ~230 per training step of the reference U-Net, activations of
 * megabytes), while the cpu backend shares the buffer. Tensors are immutable, so sharing is what
 * the wasm Reshape already does: bump the buffer's reference count and hand back the same dataId.
 */
import type * as tf from '@tensorflow/tfjs-core';
import { inputsOf, type KernelArgs } from './wasm-scope.js';

export function identitySharedWasm(args: KernelArgs): tf.TensorInfo | null {
  const { x } = inputsOf(args.inputs, 'x');
  // Strings live in JS, not on the heap: left to the shipped kernel.
  if (x.dtype === 'string') return null;
  args.backend.incRef(x.dataId);
  return { dataId: x.dataId, shape: x.shape, dtype: x.dtype };
}
