/**
 * The gradient of Relu as one kernel on cpu and wasm. tfjs-core's gradient is
 * mul(dy, cast(step(x), 'float32')): three kernels, three passes over the activations and two
 * temporary tensors, for each of the 10 ReLUs of the reference U-Net per step. BlindspotReluGrad
 * {dy, x} is one JS pass over the backend's memory with the same values bit for bit:
 * dy where x > 0, dy * 0 (a signed zero) where x <= 0, NaN where x is NaN (step(NaN) is NaN).
 *
 * `registerReluGradient()` replaces tfjs's gradient config for 'Relu' with one that runs this
 * kernel where the active backend has it and tfjs's own formula elsewhere.
 */
import * as tf from '@tensorflow/tfjs-core';
import { inputsOf, type WasmBackendLike } from './wasm-scope.js';

export const RELU_GRAD_KERNEL = 'BlindspotReluGrad';

/** gradient[i] = dy[i] * step(x[i]), as tfjs computes it. */
export function reluGradInto(dy: Float32Array, x: Float32Array, gradient: Float32Array): void {
  const n = x.length;
  for (let i = 0; i < n; i++) {
    const v = x[i];
    gradient[i] = v > 0 ? dy[i] : v !== v ? NaN : dy[i] * 0;
  }
}

/** The parts of tfjs-backend-cpu's MathBackendCPU used here. */
interface CpuBackendLike extends tf.KernelBackend {
  data: { get(dataId: tf.DataId): { values?: unknown } };
}

function checked(dy: tf.TensorInfo, x: tf.TensorInfo): void {
  if (dy.dtype !== 'float32' || x.dtype !== 'float32') throw new Error(`${RELU_GRAD_KERNEL}: dy is ${dy.dtype}, x ${x.dtype}; both must be float32`);
  if (tf.util.sizeFromShape(dy.shape) !== tf.util.sizeFromShape(x.shape)) throw new Error(`${RELU_GRAD_KERNEL}: dy [${dy.shape}] and x [${x.shape}] differ in size`);
}

const reluGradWasm: tf.KernelFunc = (args) => {
  const { dy, x } = inputsOf(args.inputs, 'dy', 'x');
  checked(dy, x);
  const backend = args.backend as WasmBackendLike;
  // Allocate before taking heap views: an allocation may grow (and move) the heap.
  const out = backend.makeOutput(x.shape, 'float32');
  const heap = (info: tf.TensorInfo): Float32Array => backend.typedArrayFromHeap(info) as Float32Array;
  reluGradInto(heap(dy), heap(x), heap(out));
  return out;
};

const reluGradCpu: tf.KernelFunc = (args) => {
  const { dy, x } = inputsOf(args.inputs, 'dy', 'x');
  checked(dy, x);
  const backend = args.backend as CpuBackendLike;
  const values = (info: tf.TensorInfo): Float32Array => {
    const v = backend.data.get(info.dataId).values;
    if (!(v instanceof Float32Array)) throw new Error(`${RELU_GRAD_KERNEL}: the cpu backend holds a tensor as ${Object.prototype.toString.call(v)}`);
    return v;
  };
  const gradient = new Float32Array(tf.util.sizeFromShape(x.shape));
  reluGradInto(values(dy), values(x), gradient);
  return { dataId: backend.write(gradient, x.shape, 'float32'), shape: x.shape, dtype: 'float32' };
};

let fusedEnabled = true;
/** false: the gradient uses tfjs's three-kernel formula everywhere (A/B benchmarks, bench/kernels.ts). */
export function setFusedReluGrad(enabled: boolean): void {
  fusedEnabled = enabled;
}

const reluGradient: tf.GradConfig = {
  kernelName: 'Relu',
  inputsToSave: ['x'],
  gradFunc: (dy: tf.Tensor | tf.Tensor[], saved: tf.Tensor[]) => {
    const [x] = saved;
    const upstream = dy as tf.Tensor;
    const fused = fusedEnabled && x.dtype === 'float32' && upstream.dtype === 'float32' && tf.getKernel(RELU_GRAD_KERNEL, tf.getBackend()) !== undefined;
    return {
      x: () => (fused ? (tf.engine().runKernel(RELU_GRAD_KERNEL, { dy: upstream, x }) as tf.Tensor) : tf.mul(upstream, tf.cast(tf.step(x), 'float32'))),
    };
  },
};

/** Registers the kernel on cpu and wasm and the 'Relu' gradient that uses it; safe to call more than once. */
export function registerReluGradient(): void {
  for (const [backendName, kernelFunc] of [
    ['cpu', reluGradCpu],
    ['wasm', reluGradWasm],
  ] as const) {
    if (tf.getKernel(RELU_GRAD_KERNEL, backendName) === undefined) tf.registerKernel({ kernelName: RELU_GRAD_KERNEL, backendName, kernelFunc });
  }
  if (tf.getGradient('Relu') !== reluGradient) tf.registerGradient(reluGradient);
}
