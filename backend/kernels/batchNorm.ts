/**
 * Batch normalisation in training mode as two kernels on the cpu and wasm backends, JS loops over
 * the backend's own memory (the cpu backend's Float32Arrays, views on the wasm heap):
 *
 * - BlindspotBatchNormTrain {x, gamma, beta} -> [y, mean, variance]: one pass for the per-channel
 *   sums, one pass for y = (x - mean) * gamma / sqrt(variance + epsilon) + beta.
 * - BlindspotBatchNormTrainGrad {dy, x, mean, variance, gamma} -> [dx, dgamma, dbeta]: one pass for
 *   the channel sums of dy and dy * xhat, one pass for dx = gamma * rstd * (dy - mean(dy) -
 *   xhat * mean(dy * xhat)).
 *
 * They replace ~9 element-wise kernels and 4 channel-sum matmuls per batch-norm layer and step
 * (each a pass over the activations, each allocating a tensor): bench/kernels.ts times both.
 * x is [..., C] with the channel last (any rank); the statistics are over all other axes. Sums are
 * accumulated in double (the forward ones shifted by the first row, so a large offset does not
 * cancel), every value is computed in double and rounded once to float32. The loops are serial
 * and in a fixed order: results do not depend on the wasm thread count and repeat exactly.
 * The variance is the biased one (divided by the element count), as tf.moments gives it; rstd is
 * computed from the float32 variance in both kernels, so forward and backward agree.
 */
import * as tf from '@tensorflow/tfjs-core';
import { inputsOf, type WasmBackendLike } from './wasm-scope.js';

export const BATCH_NORM_TRAIN_KERNEL = 'BlindspotBatchNormTrain';
export const BATCH_NORM_TRAIN_GRAD_KERNEL = 'BlindspotBatchNormTrainGrad';

export interface BatchNormAttrs {
  epsilon: number;
}

/** 1 / sqrt(variance + epsilon) per channel, from the float32 variance. */
function reciprocalStd(variance: Float32Array, epsilon: number): Float64Array {
  return Float64Array.from(variance, (v) => 1 / Math.sqrt(v + epsilon));
}

/**
 * Writes the batch mean and (biased) variance of x ([rows, channels] flattened) per channel,
 * then y. `y` may not alias `x`.
 */
export function batchNormForwardInto(
  x: Float32Array,
  gamma: Float32Array,
  beta: Float32Array,
  epsilon: number,
  out: { y: Float32Array; mean: Float32Array; variance: Float32Array },
): void {
  const channels = gamma.length;
  const rows = x.length / channels;
  if (!Number.isInteger(rows) || rows < 1) throw new Error(`${BATCH_NORM_TRAIN_KERNEL}: ${x.length} values do not split into rows of ${channels} channels`);
  const shift = Float64Array.from(x.subarray(0, channels));
  const sum = new Float64Array(channels);
  const sumSq = new Float64Array(channels);
  // Four rows per pass over the channels (here and below): the per-channel accumulators and
  // coefficients are loaded once per four values, 2-3x faster than one row per pass in V8.
  const block = 4 * channels;
  let base = 0;
  for (; base + block <= x.length; base += block) {
    const r1 = base + channels;
    const r2 = r1 + channels;
    const r3 = r2 + channels;
    for (let c = 0; c < channels; c++) {
      const s = shift[c];
      const d0 = x[base + c] - s;
      const d1 = x[r1 + c] - s;
      const d2 = x[r2 + c] - s;
      const d3 = x[r3 + c] - s;
      sum[c] += d0 + d1 + (d2 + d3);
      sumSq[c] += d0 * d0 + d1 * d1 + (d2 * d2 + d3 * d3);
    }
  }
  for (; base < x.length; base += channels) {
    for (let c = 0; c < channels; c++) {
      const d = x[base + c] - shift[c];
      sum[c] += d;
      sumSq[c] += d * d;
    }
  }
  const mean = new Float64Array(channels);
  for (let c = 0; c < channels; c++) {
    const shiftedMean = sum[c] / rows;
    mean[c] = shift[c] + shiftedMean;
    out.mean[c] = mean[c];
    out.variance[c] = Math.max(0, sumSq[c] / rows - shiftedMean * shiftedMean);
  }
  const rstd = reciprocalStd(out.variance, epsilon);
  const scale = Float64Array.from(rstd, (r, c) => r * gamma[c]);
  const offset = Float64Array.from(beta);
  const y = out.y;
  for (base = 0; base + block <= x.length; base += block) {
    const r1 = base + channels;
    const r2 = r1 + channels;
    const r3 = r2 + channels;
    for (let c = 0; c < channels; c++) {
      const m = mean[c];
      const s = scale[c];
      const o = offset[c];
      y[base + c] = (x[base + c] - m) * s + o;
      y[r1 + c] = (x[r1 + c] - m) * s + o;
      y[r2 + c] = (x[r2 + c] - m) * s + o;
      y[r3 + c] = (x[r3 + c] - m) * s + o;
    }
  }
  for (; base < x.length; base += channels) {
    for (let c = 0; c < channels; c++) y[base + c] = (x[base + c] - mean[c]) * scale[c] + offset[c];
  }
}

/** Writes dx, dgamma and dbeta of batchNormForwardInto's y, given dy and the saved statistics. */
export function batchNormBackwardInto(
  dy: Float32Array,
  x: Float32Array,
  mean32: Float32Array,
  variance: Float32Array,
  gamma: Float32Array,
  epsilon: number,
  out: { dx: Float32Array; dgamma: Float32Array; dbeta: Float32Array },
): void {
  const channels = gamma.length;
  const rows = x.length / channels;
  if (dy.length !== x.length) throw new Error(`${BATCH_NORM_TRAIN_GRAD_KERNEL}: dy has ${dy.length} values, x ${x.length}`);
  const mean = Float64Array.from(mean32);
  const rstd = reciprocalStd(variance, epsilon);
  const sumDy = new Float64Array(channels);
  const sumDyCentred = new Float64Array(channels);
  const block = 4 * channels;
  let base = 0;
  for (; base + block <= x.length; base += block) {
    const r1 = base + channels;
    const r2 = r1 + channels;
    const r3 = r2 + channels;
    for (let c = 0; c < channels; c++) {
      const m = mean[c];
      const g0 = dy[base + c];
      const g1 = dy[r1 + c];
      const g2 = dy[r2 + c];
      const g3 = dy[r3 + c];
      sumDy[c] += g0 + g1 + (g2 + g3);
      sumDyCentred[c] += g0 * (x[base + c] - m) + g1 * (x[r1 + c] - m) + (g2 * (x[r2 + c] - m) + g3 * (x[r3 + c] - m));
    }
  }
  for (; base < x.length; base += channels) {
    for (let c = 0; c < channels; c++) {
      const g = dy[base + c];
      sumDy[c] += g;
      sumDyCentred[c] += g * (x[base + c] - mean[c]);
    }
  }
  // dx = a * (dy - b - (x - mean) * k) with a = gamma rstd, b = mean(dy), k = rstd^2 mean(dy (x - mean)).
  const a = new Float64Array(channels);
  const b = new Float64Array(channels);
  const k = new Float64Array(channels);
  for (let c = 0; c < channels; c++) {
    const dgamma = sumDyCentred[c] * rstd[c];
    out.dgamma[c] = dgamma;
    out.dbeta[c] = sumDy[c];
    a[c] = gamma[c] * rstd[c];
    b[c] = sumDy[c] / rows;
    k[c] = (dgamma / rows) * rstd[c];
  }
  const dx = out.dx;
  for (base = 0; base + block <= x.length; base += block) {
    const r1 = base + channels;
    const r2 = r1 + channels;
    const r3 = r2 + channels;
    for (let c = 0; c < channels; c++) {
      const m = mean[c];
      const ac = a[c];
      const bc = b[c];
      const kc = k[c];
      dx[base + c] = ac * (dy[base + c] - bc - (x[base + c] - m) * kc);
      dx[r1 + c] = ac * (dy[r1 + c] - bc - (x[r1 + c] - m) * kc);
      dx[r2 + c] = ac * (dy[r2 + c] - bc - (x[r2 + c] - m) * kc);
      dx[r3 + c] = ac * (dy[r3 + c] - bc - (x[r3 + c] - m) * kc);
    }
  }
  for (; base < x.length; base += channels) {
    for (let c = 0; c < channels; c++) dx[base + c] = a[c] * (dy[base + c] - b[c] - (x[base + c] - mean[c]) * k[c]);
  }
}

function checkFloat32(kernel: string, infos: Record<string, tf.TensorInfo>): void {
  for (const [name, info] of Object.entries(infos)) {
    if (info.dtype !== 'float32') throw new Error(`${kernel}: ${name} is ${info.dtype}, not float32`);
  }
}

function checkChannels(kernel: string, x: tf.TensorInfo, perChannel: Record<string, tf.TensorInfo>): number {
  const channels = x.shape[x.shape.length - 1];
  for (const [name, info] of Object.entries(perChannel)) {
    if (tf.util.sizeFromShape(info.shape) !== channels) throw new Error(`${kernel}: ${name} has shape [${info.shape}], x [${x.shape}] has ${channels} channels`);
  }
  return channels;
}

function epsilonOf(attrs: tf.NamedAttrMap | undefined): number {
  const epsilon = (attrs as unknown as BatchNormAttrs | undefined)?.epsilon;
  if (typeof epsilon !== 'number' || !(epsilon >= 0)) throw new Error(`batch-norm kernels need a non-negative epsilon, got ${String(epsilon)}`);
  return epsilon;
}

/** How each backend hands out the values of a tensor and makes an output. */
interface Memory {
  values(info: tf.TensorInfo): Float32Array;
  /** Outputs are all allocated before any `values` view is taken (a wasm allocation may move the heap). */
  allocate(shape: number[]): tf.TensorInfo;
}

function wasmMemory(backend: tf.KernelBackend): Memory {
  const wasm = backend as WasmBackendLike;
  return {
    values: (info) => wasm.typedArrayFromHeap(info) as Float32Array,
    allocate: (shape) => wasm.makeOutput(shape, 'float32'),
  };
}

/** The parts of tfjs-backend-cpu's MathBackendCPU used here. */
interface CpuBackendLike extends tf.KernelBackend {
  data: { get(dataId: tf.DataId): { values?: unknown } };
}

function cpuMemory(backend: tf.KernelBackend): Memory {
  const cpu = backend as CpuBackendLike;
  return {
    values: (info) => {
      const values = cpu.data.get(info.dataId).values;
      if (!(values instanceof Float32Array)) throw new Error(`batch-norm kernels: the cpu backend holds a tensor as ${Object.prototype.toString.call(values)}`);
      return values;
    },
    allocate: (shape) => ({ dataId: cpu.write(new Float32Array(tf.util.sizeFromShape(shape)), shape, 'float32'), shape, dtype: 'float32' }),
  };
}

function forwardKernel(memoryOf: (backend: tf.KernelBackend) => Memory): tf.KernelFunc {
  return (args) => {
    const { x, gamma, beta } = inputsOf(args.inputs, 'x', 'gamma', 'beta');
    checkFloat32(BATCH_NORM_TRAIN_KERNEL, { x, gamma, beta });
    const channels = checkChannels(BATCH_NORM_TRAIN_KERNEL, x, { gamma, beta });
    const epsilon = epsilonOf(args.attrs);
    const memory = memoryOf(args.backend as tf.KernelBackend);
    const y = memory.allocate(x.shape);
    const mean = memory.allocate([channels]);
    const variance = memory.allocate([channels]);
    batchNormForwardInto(memory.values(x), memory.values(gamma), memory.values(beta), epsilon, {
      y: memory.values(y),
      mean: memory.values(mean),
      variance: memory.values(variance),
    });
    return [y, mean, variance];
  };
}

function backwardKernel(memoryOf: (backend: tf.KernelBackend) => Memory): tf.KernelFunc {
  return (args) => {
    const { dy, x, mean, variance, gamma } = inputsOf(args.inputs, 'dy', 'x', 'mean', 'variance', 'gamma');
    checkFloat32(BATCH_NORM_TRAIN_GRAD_KERNEL, { dy, x, mean, variance, gamma });
    const channels = checkChannels(BATCH_NORM_TRAIN_GRAD_KERNEL, x, { mean, variance, gamma });
    const epsilon = epsilonOf(args.attrs);
    const memory = memoryOf(args.backend as tf.KernelBackend);
    const dx = memory.allocate(x.shape);
    const dgamma = memory.allocate([channels]);
    const dbeta = memory.allocate([channels]);
    batchNormBackwardInto(memory.values(dy), memory.values(x), memory.values(mean), memory.values(variance), memory.values(gamma), epsilon, {
      dx: memory.values(dx),
      dgamma: memory.values(dgamma),
      dbeta: memory.values(dbeta),
    });
    return [dx, dgamma, dbeta];
  };
}

/** Backends with the batch-norm kernels. */
export const batchNormBackends = ['cpu', 'wasm'] as const;

/** Registers both kernels on cpu and wasm (the backends need not be loaded); safe to call more than once. */
export function registerBatchNormKernels(): void {
  const memories: Record<(typeof batchNormBackends)[number], (backend: tf.KernelBackend) => Memory> = { cpu: cpuMemory, wasm: wasmMemory };
  for (const backendName of batchNormBackends) {
    for (const [kernelName, make] of [
      [BATCH_NORM_TRAIN_KERNEL, forwardKernel],
      [BATCH_NORM_TRAIN_GRAD_KERNEL, backwardKernel],
    ] as const) {
      if (tf.getKernel(kernelName, backendName) === undefined) {
        tf.registerKernel({ kernelName, backendName, kernelFunc: make(memories[backendName]) });
      }
    }
  }
}

let fusedEnabled = true;
/** Turns the fused path off (false: callers compose the op from tfjs ops), for A/B benchmarks (bench/kernels.ts). */
export function setFusedBatchNorm(enabled: boolean): void {
  fusedEnabled = enabled;
}

/** Whether the active backend has the fused kernels (else callers compose the op from tfjs ops). */
export function batchNormKernelsAvailable(): boolean {
  if (!fusedEnabled) return false;
  const backendName = tf.getBackend();
  return tf.getKernel(BATCH_NORM_TRAIN_KERNEL, backendName) !== undefined && tf.getKernel(BATCH_NORM_TRAIN_GRAD_KERNEL, backendName) !== undefined;
}

/** Runs the forward kernel on tensors: [y, mean, variance]. */
export function batchNormTrainKernel(x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor, epsilon: number): [tf.Tensor, tf.Tensor1D, tf.Tensor1D] {
  const attrs: BatchNormAttrs = { epsilon };
  return tf.engine().runKernel(BATCH_NORM_TRAIN_KERNEL, { x, gamma, beta }, attrs as unknown as tf.NamedAttrMap) as unknown as [tf.Tensor, tf.Tensor1D, tf.Tensor1D];
}

/** Runs the backward kernel on tensors: [dx, dgamma, dbeta]. */
export function batchNormTrainGradKernel(
  dy: tf.Tensor,
  x: tf.Tensor,
  mean: tf.Tensor,
  variance: tf.Tensor,
  gamma: tf.Tensor,
  epsilon: number,
): [tf.Tensor, tf.Tensor1D, tf.Tensor1D] {
  const attrs: BatchNormAttrs = { epsilon };
  return tf.engine().runKernel(BATCH_NORM_TRAIN_GRAD_KERNEL, { dy, x, mean, variance, gamma }, attrs as unknown as tf.NamedAttrMap) as unknown as [tf.Tensor, tf.Tensor1D, tf.Tensor1D];
}

