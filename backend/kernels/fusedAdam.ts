/**
 * One Adam update of one variable as a single kernel on the cpu and wasm backends: a JS loop over
 * the backend's own memory (the cpu backend's Float32Arrays, views on the wasm heap) instead of
 * tfjs AdamOptimizer's ~12 element-wise ops per variable, each allocating a tensor.
 *
 * The maths is tfjs-core 4.22's AdamOptimizer.applyGradients op for op, every intermediate rounded
 * to float32 as its float32 kernels do (Math.fround after each +, *, /, sqrt: double rounding of a
 * single IEEE operation on float32 inputs is exact), so the result equals tf.train.adam bit for bit
 * wherever the backend's element-wise ops are IEEE float32:
 *   m' = m*b1 + g*(1-b1);  v' = v*b2 + (g*g)*(1-b2)
 *   x' = ((m'/(1-b1^t)) / (sqrt(v'/(1-b2^t)) + eps)) * (-lr) + x
 *
 * Inputs {variable, gradient, firstMoment, secondMoment}, float32, same shape. The moments are
 * updated in place (the caller owns them: their buffers must not be shared, refCount 1); the new
 * variable value comes back in a fresh buffer. It must not be written in place: the wasm Conv2D
 * caches an XNNPACK operator holding a packed copy of the filter, keyed by the filter tensor's id,
 * so a filter changed under the same id would keep convolving with its old values; and a
 * variable's buffer may be shared (tf.clone, reshape and Variable.assign share buffers).
 */
import * as tf from '@tensorflow/tfjs-core';
import { inputsOf, type KernelArgs, type WasmBackendLike } from './wasm-scope.js';

export const ADAM_UPDATE_KERNEL = 'BlindspotAdamUpdate';

/**
 * The per-step scalars of the update, each already a float32 value (Math.fround), as tfjs's
 * scalar tensors hold them.
 */
export interface AdamUpdateCoefficients {
  beta1: number;
  beta2: number;
  /** 1 - beta1, computed in double then rounded, as tfjs does (`mul(g, 1 - this.beta1)`). */
  oneMinusBeta1: number;
  oneMinusBeta2: number;
  /** 1 - beta1^t with beta1^t accumulated in float32. */
  biasCorrection1: number;
  biasCorrection2: number;
  epsilon: number;
  /** -learningRate. */
  negLearningRate: number;
}

/** The loop itself: writes `updated` and the moments `m`, `v` (in place). All arrays the same length. */
export function adamUpdateInto(
  value: Float32Array,
  gradient: Float32Array,
  m: Float32Array,
  v: Float32Array,
  updated: Float32Array,
  c: AdamUpdateCoefficients,
): void {
  const f = Math.fround;
  const { beta1, beta2, oneMinusBeta1, oneMinusBeta2, biasCorrection1, biasCorrection2, epsilon, negLearningRate } = c;
  const n = value.length;
  for (let i = 0; i < n; i++) {
    const g = gradient[i];
    const mi = f(f(m[i] * beta1) + f(g * oneMinusBeta1));
    const vi = f(f(v[i] * beta2) + f(f(g * g) * oneMinusBeta2));
    m[i] = mi;
    v[i] = vi;
    const mHat = f(mi / biasCorrection1);
    const vHat = f(vi / biasCorrection2);
    const ratio = f(mHat / f(f(Math.sqrt(vHat)) + epsilon));
    updated[i] = f(ratio * negLearningRate) + value[i];
  }
}

function coefficientsOf(attrs: tf.NamedAttrMap | undefined): AdamUpdateCoefficients {
  return attrs as unknown as AdamUpdateCoefficients;
}

function checkInputs(infos: Record<'variable' | 'gradient' | 'firstMoment' | 'secondMoment', tf.TensorInfo>, backend: tf.KernelBackend): void {
  const size = tf.util.sizeFromShape(infos.variable.shape);
  for (const [name, info] of Object.entries(infos)) {
    if (info.dtype !== 'float32') throw new Error(`${ADAM_UPDATE_KERNEL}: ${name} is ${info.dtype}, not float32`);
    if (tf.util.sizeFromShape(info.shape) !== size) throw new Error(`${ADAM_UPDATE_KERNEL}: ${name} has shape [${info.shape}], the variable [${infos.variable.shape}]`);
  }
  for (const name of ['firstMoment', 'secondMoment'] as const) {
    if (backend.refCount(infos[name].dataId) !== 1) throw new Error(`${ADAM_UPDATE_KERNEL}: ${name} is shared and cannot be updated in place`);
  }
}

const INPUT_NAMES = ['variable', 'gradient', 'firstMoment', 'secondMoment'] as const;

function adamUpdateWasm(args: KernelArgs): tf.TensorInfo {
  const infos = inputsOf(args.inputs, ...INPUT_NAMES);
  checkInputs(infos, args.backend);
  const backend = args.backend as WasmBackendLike;
  // Allocate first: an allocation may grow (and move) the heap and detach earlier views.
  const out = backend.makeOutput(infos.variable.shape, 'float32');
  const heap = (info: tf.TensorInfo): Float32Array => backend.typedArrayFromHeap(info) as Float32Array;
  adamUpdateInto(heap(infos.variable), heap(infos.gradient), heap(infos.firstMoment), heap(infos.secondMoment), heap(out), coefficientsOf(args.attrs));
  return out;
}

/** The parts of tfjs-backend-cpu's MathBackendCPU used here. */
interface CpuBackendLike extends tf.KernelBackend {
  data: { get(dataId: tf.DataId): { values?: unknown } };
}

function cpuValues(backend: CpuBackendLike, info: tf.TensorInfo, name: string): Float32Array {
  const values = backend.data.get(info.dataId).values;
  if (!(values instanceof Float32Array)) throw new Error(`${ADAM_UPDATE_KERNEL}: the cpu backend holds ${name} as ${Object.prototype.toString.call(values)}`);
  return values;
}

function adamUpdateCpu(args: KernelArgs): tf.TensorInfo {
  const infos = inputsOf(args.inputs, ...INPUT_NAMES);
  checkInputs(infos, args.backend);
  const backend = args.backend as CpuBackendLike;
  const updated = new Float32Array(tf.util.sizeFromShape(infos.variable.shape));
  adamUpdateInto(
    cpuValues(backend, infos.variable, 'variable'),
    cpuValues(backend, infos.gradient, 'gradient'),
    cpuValues(backend, infos.firstMoment, 'firstMoment'),
    cpuValues(backend, infos.secondMoment, 'secondMoment'),
    updated,
    coefficientsOf(args.attrs),
  );
  return { dataId: backend.write(updated, infos.variable.shape, 'float32'), shape: infos.variable.shape, dtype: 'float32' };
}

/** Backends with the fused kernel. */
export const adamUpdateBackends = ['cpu', 'wasm'] as const;

/** Registers the kernel on cpu and wasm; safe to call more than once. */
export function registerAdamUpdateKernels(): void {
  const funcs: Record<(typeof adamUpdateBackends)[number], tf.KernelFunc> = {
    cpu: adamUpdateCpu as unknown as tf.KernelFunc,
    wasm: adamUpdateWasm as unknown as tf.KernelFunc,
  };
  for (const backendName of adamUpdateBackends) {
    if (tf.getKernel(ADAM_UPDATE_KERNEL, backendName) === undefined) {
      tf.registerKernel({ kernelName: ADAM_UPDATE_KERNEL, backendName, kernelFunc: funcs[backendName] });
    }
  }
}
