/**
 * Kernels the TensorFlow.js wasm backend (4.22.0) lacks, or ships too slow, for training 2D and
 * 3D U-Nets. `registerWasmTrainingKernels()` installs them on 'wasm'; it is idempotent.
 *
 * Registered (overrides keep the shipped kernelFunc as the fallback for cases not handled here):
 * - Conv2DBackpropFilter   (missing on wasm): one forward conv on transposed tensors, any stride/padding
 *                          (x's transpose as a tiled JS loop, conv2d-grad.ts batchToLast).
 * - Conv2DBackpropInput    (shipped: plain loop): a forward conv with the flipped filter
 *                          (strides > 1 on a zero-inserted dy).
 * - Conv3D                 (shipped: plain loop): depth taps of batched 2D convs, any stride.
 * - Conv3DBackpropInputV2  (shipped: wrong results): per depth tap the 2D dx, scattered in depth.
 * - Conv3DBackpropFilterV2 (shipped: loop, wrong for strides > 1): per depth tap the 2D dW.
 * - SplitV                 (shipped: generic slice, slow): splits on any axis as strided row copies.
 * - Concat                 (shipped: one typed-array view per row and input): strided block copies, any axis.
 * - Identity               (shipped: a copy): shares the buffer, as the cpu backend does (identity.ts).
 * - MaxPoolGrad            (shipped: slow loop): one argmax pass over the windows (maxPoolGrad.ts).
 * - BatchMatMul            (shipped: XNNPACK packs the right operand every call): one-row products
 *                          (batch-norm channel sums) as a streaming loop (matmulRow.ts).
 * 3D kernels: dilation 1, padding 'same'/'valid' (what tfjs accepts for 3D), any stride.
 * Also registers BlindspotAdamUpdate on cpu and wasm (the fused Adam step of models/optimizer.ts,
 * see fusedAdam.ts), the fused batch-norm kernels BlindspotBatchNormTrain / BlindspotBatchNormTrainGrad
 * on cpu and wasm (batchNorm.ts; models/layers.ts registers them too; on the threaded wasm build
 * they give half of the rows to a helper JS thread, heapHelper.ts) and the gradient of Conv3DBackpropInputV2 (missing in tfjs-core on every backend;
 * tf.layers.conv3dTranspose needs it to train). The other gradients come from tfjs's own
 * registrations (importing @tensorflow/tfjs-layers does it).
 */
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-wasm';
import { conv2DBackpropFilterWasm, conv2DBackpropInputFast } from './conv2d-grad.js';
import { registerMissingGradients } from './gradients.js';
import { registerAdamUpdateKernels } from './fusedAdam.js';
import { registerBatchNormKernels } from './batchNorm.js';
import type { KernelArgs } from './wasm-scope.js';
import { conv3DBackpropFilterFast, conv3DBackpropInputFast, conv3DFast } from './conv3d.js';
import { splitVFast } from './split.js';
import { concatFast } from './concat.js';
import { identitySharedWasm } from './identity.js';
import { maxPoolGradFast } from './maxPoolGrad.js';
import { batchMatMulRowFast } from './matmulRow.js';

/** A fast path: returns null for the cases it leaves to the shipped kernel. */
type FastPath = (args: KernelArgs) => tf.TensorInfo | tf.TensorInfo[] | null;

const ourKernelFuncs = new WeakSet<tf.KernelFunc>();

/** Names of the kernels `registerWasmTrainingKernels` installs, in registration order. */
export const wasmTrainingKernelNames = [
  'Conv2DBackpropFilter',
  'Conv2DBackpropInput',
  'Conv3D',
  'Conv3DBackpropInputV2',
  'Conv3DBackpropFilterV2',
  'SplitV',
  'Concat',
  'Identity',
  'MaxPoolGrad',
  'BatchMatMul',
] as const;

function install(kernelName: string, fast: FastPath, needsFallback: boolean): void {
  const current = tf.getKernel(kernelName, 'wasm');
  if (current !== undefined && ourKernelFuncs.has(current.kernelFunc)) return;
  const fallback = current?.kernelFunc;
  if (needsFallback && fallback === undefined) {
    throw new Error(`wasm kernel ${kernelName} was expected from tfjs-backend-wasm but is not registered`);
  }
  const kernelFunc: tf.KernelFunc = (args) => {
    const result = fast(args as KernelArgs);
    if (result !== null) return result;
    if (fallback === undefined) {
      throw new Error(`wasm ${kernelName}: this configuration (${JSON.stringify(args.attrs)}) is not supported`);
    }
    return fallback(args);
  };
  ourKernelFuncs.add(kernelFunc);
  if (current !== undefined) tf.unregisterKernel(kernelName, 'wasm');
  tf.registerKernel({ kernelName, backendName: 'wasm', kernelFunc, setupFunc: current?.setupFunc });
}

/** Registers the training kernels on the 'wasm' backend; safe to call more than once. */
export function registerWasmTrainingKernels(): void {
  registerMissingGradients();
  registerAdamUpdateKernels();
  registerBatchNormKernels();
  install('Conv2DBackpropFilter', conv2DBackpropFilterWasm, false);
  install('Conv2DBackpropInput', conv2DBackpropInputFast, true);
  install('Conv3D', conv3DFast, true);
  install('Conv3DBackpropInputV2', conv3DBackpropInputFast, true);
  install('Conv3DBackpropFilterV2', conv3DBackpropFilterFast, true);
  install('SplitV', splitVFast, true);
  install('Concat', concatFast, true);
  install('Identity', identitySharedWasm, true);
  install('MaxPoolGrad', maxPoolGradFast, true);
  install('BatchMatMul', batchMatMulRowFast, true);
}
