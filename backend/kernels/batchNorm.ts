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
 * cancel), every value is computed in double and rounded once to float32. Each pass runs on two
 * shares of rows cut at a fixed place, whose sums are added in a fixed order, whether the shares
 * run one after the other or (optional, setBatchNormHelperThread) one of them on a helper thread:
 * results do not depend on the wasm thread count and repeat exactly.
 * The variance is the biased one (divided by the element count), as tf.moments gives it; rstd is
 * computed from the float32 variance in both kernels, so forward and backward agree.
 */
import * as tf from '@tensorflow/tfjs-core';
import * as tfWasm from '@tensorflow/tfjs-backend-wasm';
import { HeapHelper } from './heapHelper.js';
import { inputsOf, type WasmBackendLike } from './wasm-scope.js';
import { channelSumsRange, gradientSumsRange, inputGradientRange, normaliseRange } from './batchNormRows.js';

export const BATCH_NORM_TRAIN_KERNEL = 'BlindspotBatchNormTrain';
export const BATCH_NORM_TRAIN_GRAD_KERNEL = 'BlindspotBatchNormTrainGrad';

export interface BatchNormAttrs {
  epsilon: number;
}

/** 1 / sqrt(variance + epsilon) per channel, from the float32 variance. */
function reciprocalStd(variance: Float32Array, epsilon: number): Float64Array {
  return Float64Array.from(variance, (v) => 1 / Math.sqrt(v + epsilon));
}

/** The jobs the helper thread knows, by index. */
const HELPER_JOBS = [channelSumsRange, normaliseRange, gradientSumsRange, inputGradientRange] as const;
const JOB = { sums: 0, normalise: 1, gradientSums: 2, inputGradient: 3 } as const;
const JOB_ARRAYS = [1, 2, 2, 3] as const;

/** Below this many values the helper thread's hand-off costs more than it saves. */
const HELPER_MIN_VALUES = 1 << 16;

/**
 * On by default (it is used only with >= 2 wasm threads on a shared heap): on the idle 2-core machine
 * bench:speed trained 0.913-0.915 steps/s with it against 0.836-0.857 without, because XNNPACK's
 * second thread idles while these JS loops run. Under load from other processes it can lose (0.77x
 * measured on a busy machine): `bench:speed -- --bn-helper off` and the A/B rows of bench:kernels
 * measure it. Results are bit-identical either way.
 */
let helperEnabled = true;
let helper: HeapHelper | null = null;
let helperCalls = 0;
/** How many kernel calls so far shared their rows with the helper thread (tests check the path is taken). */
export function batchNormHelperCalls(): number {
  return helperCalls;
}
/** Turns the helper thread on or off (off: both shares run here, one after the other; same results). */
export function setBatchNormHelperThread(enabled: boolean): void {
  helperEnabled = enabled;
}

/**
 * The rows are always cut in two at the same place (a multiple of 4) and each share's sums are
 * kept apart and added in the same order, whether the shares run on two threads or one after the
 * other: results do not depend on the thread count.
 */
function splitRow(rows: number): number {
  return 4 * Math.floor(rows / 8);
}

/** Where the two shares run: here one after the other, or one on the helper thread. */
interface ShareRunner {
  scratch(length: number): Float64Array;
  /** Runs HELPER_JOBS[job] on `arrays` with `argsFirst` here and with `argsSecond` (here or on the helper). */
  both(job: number, arrays: Float32Array[], argsFirst: number[], argsSecond: number[]): void;
}

/** The scratch of the call in progress (kernels run one at a time on the main thread). */
let currentScratch: Float64Array = new Float64Array(0);

function runnerFor(values: number, heap: ArrayBufferLike | null): ShareRunner {
  const call = (job: number, arrays: Float32Array[], args: number[]): void => (HELPER_JOBS[job] as (...a: unknown[]) => void)(...arrays, currentScratch, ...args);
  const useHelper = helperEnabled && heap instanceof SharedArrayBuffer && values >= HELPER_MIN_VALUES && wasmThreads() >= 2;
  if (!useHelper) {
    return {
      scratch: (length) => (currentScratch = new Float64Array(length)),
      both: (job, arrays, first, second) => {
        call(job, arrays, first);
        call(job, arrays, second);
      },
    };
  }
  helper ??= new HeapHelper(HELPER_JOBS);
  helperCalls++;
  const h = helper;
  return {
    scratch: (length) => (currentScratch = h.scratch(length)),
    both: (job, arrays, first, second) => h.run(job, heap, JOB_ARRAYS[job], second, () => call(job, arrays, first)),
  };
}

function wasmThreads(): number {
  try {
    return tfWasm.getThreadsCount();
  } catch {
    return 1;
  }
}

/**
 * Writes the batch mean and (biased) variance per channel, then y. x and y are addressed at
 * xAt / yAt (elements) in their arrays (which may be one wasm heap); `heap` is that heap's buffer
 * when the helper thread may share the work (else null).
 */
function batchNormForward(
  x: Float32Array,
  xAt: number,
  y: Float32Array,
  yAt: number,
  rows: number,
  gamma: Float32Array,
  beta: Float32Array,
  epsilon: number,
  outMean: Float32Array,
  outVariance: Float32Array,
  heap: ArrayBufferLike | null,
): void {
  const channels = gamma.length;
  const runner = runnerFor(rows * channels, heap);
  // Scratch: shift, sum and sum of squares of each share, mean, scale, offset.
  const scratch = runner.scratch(8 * channels);
  const [shiftAt, sumA, sumSqA, sumB, sumSqB, meanAt, scaleAt, offsetAt] = [0, 1, 2, 3, 4, 5, 6, 7].map((k) => k * channels);
  scratch.fill(0, 0, 8 * channels);
  for (let c = 0; c < channels; c++) scratch[shiftAt + c] = x[xAt + c];
  const split = splitRow(rows);
  runner.both(JOB.sums, [x], [xAt, channels, 0, split, shiftAt, sumA, sumSqA], [xAt, channels, split, rows, shiftAt, sumB, sumSqB]);
  for (let c = 0; c < channels; c++) {
    const shiftedMean = (scratch[sumA + c] + scratch[sumB + c]) / rows;
    const mean = scratch[shiftAt + c] + shiftedMean;
    scratch[meanAt + c] = mean;
    outMean[c] = mean;
    outVariance[c] = Math.max(0, (scratch[sumSqA + c] + scratch[sumSqB + c]) / rows - shiftedMean * shiftedMean);
  }
  const rstd = reciprocalStd(outVariance, epsilon);
  for (let c = 0; c < channels; c++) {
    scratch[scaleAt + c] = rstd[c] * gamma[c];
    scratch[offsetAt + c] = beta[c];
  }
  runner.both(JOB.normalise, [x, y], [xAt, yAt, channels, 0, split, meanAt, scaleAt, offsetAt], [xAt, yAt, channels, split, rows, meanAt, scaleAt, offsetAt]);
}

/** dx, dgamma and dbeta of batchNormForward's y, given dy and the saved statistics; addressing as there. */
function batchNormBackward(
  dy: Float32Array,
  dyAt: number,
  x: Float32Array,
  xAt: number,
  dx: Float32Array,
  dxAt: number,
  rows: number,
  mean32: Float32Array,
  variance: Float32Array,
  gamma: Float32Array,
  epsilon: number,
  outDgamma: Float32Array,
  outDbeta: Float32Array,
  heap: ArrayBufferLike | null,
): void {
  const channels = gamma.length;
  const runner = runnerFor(rows * channels, heap);
  // Scratch: mean, the two sums of each share, then a, b, k of dx = a (dy - b - (x - mean) k).
  const scratch = runner.scratch(8 * channels);
  const [meanAt, sumDyA, sumCentredA, sumDyB, sumCentredB, aAt, bAt, kAt] = [0, 1, 2, 3, 4, 5, 6, 7].map((k) => k * channels);
  scratch.fill(0, 0, 8 * channels);
  for (let c = 0; c < channels; c++) scratch[meanAt + c] = mean32[c];
  const rstd = reciprocalStd(variance, epsilon);
  const split = splitRow(rows);
  runner.both(JOB.gradientSums, [dy, x], [dyAt, xAt, channels, 0, split, meanAt, sumDyA, sumCentredA], [dyAt, xAt, channels, split, rows, meanAt, sumDyB, sumCentredB]);
  for (let c = 0; c < channels; c++) {
    const sumDy = scratch[sumDyA + c] + scratch[sumDyB + c];
    const dgamma = (scratch[sumCentredA + c] + scratch[sumCentredB + c]) * rstd[c];
    outDgamma[c] = dgamma;
    outDbeta[c] = sumDy;
    scratch[aAt + c] = gamma[c] * rstd[c];
    scratch[bAt + c] = sumDy / rows;
    scratch[kAt + c] = (dgamma / rows) * rstd[c];
  }
  runner.both(
    JOB.inputGradient,
    [dy, x, dx],
    [dyAt, xAt, dxAt, channels, 0, split, meanAt, aAt, bAt, kAt],
    [dyAt, xAt, dxAt, channels, split, rows, meanAt, aAt, bAt, kAt],
  );
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
  batchNormForward(x, 0, out.y, 0, rows, gamma, beta, epsilon, out.mean, out.variance, null);
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
  if (dy.length !== x.length) throw new Error(`${BATCH_NORM_TRAIN_GRAD_KERNEL}: dy has ${dy.length} values, x ${x.length}`);
  batchNormBackward(dy, 0, x, 0, out.dx, 0, x.length / gamma.length, mean32, variance, gamma, epsilon, out.dgamma, out.dbeta, null);
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
  /** The array holding a large tensor and where it starts: the whole wasm heap, or the cpu backend's own array. */
  locate(info: tf.TensorInfo): { array: Float32Array; at: number };
  /** The wasm heap's buffer (the helper thread can share it when it is a SharedArrayBuffer), else null. */
  heap(): ArrayBufferLike | null;
  /** Outputs are all allocated before any `values` view is taken (a wasm allocation may move the heap). */
  allocate(shape: number[]): tf.TensorInfo;
}

function wasmMemory(backend: tf.KernelBackend): Memory {
  const wasm = backend as WasmBackendLike;
  const values = (info: tf.TensorInfo): Float32Array => wasm.typedArrayFromHeap(info) as Float32Array;
  let heapBuffer: ArrayBufferLike | null = null;
  return {
    values,
    locate: (info) => {
      const view = values(info);
      heapBuffer = view.buffer;
      return { array: new Float32Array(view.buffer), at: view.byteOffset / 4 };
    },
    heap: () => heapBuffer,
    allocate: (shape) => wasm.makeOutput(shape, 'float32'),
  };
}

/** The parts of tfjs-backend-cpu's MathBackendCPU used here. */
interface CpuBackendLike extends tf.KernelBackend {
  data: { get(dataId: tf.DataId): { values?: unknown } };
}

function cpuMemory(backend: tf.KernelBackend): Memory {
  const cpu = backend as CpuBackendLike;
  const values = (info: tf.TensorInfo): Float32Array => {
    const v = cpu.data.get(info.dataId).values;
    if (!(v instanceof Float32Array)) throw new Error(`batch-norm kernels: the cpu backend holds a tensor as ${Object.prototype.toString.call(v)}`);
    return v;
  };
  return {
    values,
    locate: (info) => ({ array: values(info), at: 0 }),
    heap: () => null,
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
    const xIn = memory.locate(x);
    const yOut = memory.locate(y);
    const rows = tf.util.sizeFromShape(x.shape) / channels;
    batchNormForward(xIn.array, xIn.at, yOut.array, yOut.at, rows, memory.values(gamma), memory.values(beta), epsilon, memory.values(mean), memory.values(variance), memory.heap());
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
    if (tf.util.sizeFromShape(dy.shape) !== tf.util.sizeFromShape(x.shape)) throw new Error(`${BATCH_NORM_TRAIN_GRAD_KERNEL}: dy [${dy.shape}] and x [${x.shape}] differ in size`);
    const dyIn = memory.locate(dy);
    const xIn = memory.locate(x);
    const dxOut = memory.locate(dx);
    const rows = tf.util.sizeFromShape(x.shape) / channels;
    batchNormBackward(dyIn.array, dyIn.at, xIn.array, xIn.at, dxOut.array, dxOut.at, rows, memory.values(mean), memory.values(variance), memory.values(gamma), epsilon, memory.values(dgamma), memory.values(dbeta), memory.heap());
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

