/**
 * Helpers for the webgpu kernel overrides (webgpuRank5.ts, webgpuConv3d.ts): each override is a
 * kernel function that computes its case with the backend's own shipped kernels, and frees its
 * intermediates with disposeData, as tfjs's kernels do.
 */
import * as tf from '@tensorflow/tfjs-core';

const BACKEND = 'webgpu';

export type Kernel = (args: { inputs: tf.NamedTensorInfoMap; backend: tf.KernelBackend; attrs?: tf.NamedAttrMap }) => tf.TensorInfo | tf.TensorInfo[];

/** The shipped kernels, captured before any override. */
const shipped = new Map<string, Kernel>();

/** The kernel tfjs-backend-webgpu registered under `name`, even after an override replaced it. */
export function shippedKernel(name: string): Kernel {
  const kernel = shipped.get(name) ?? (tf.getKernel(name, BACKEND)?.kernelFunc as Kernel | undefined);
  if (kernel === undefined) throw new Error(`webgpu kernel ${name} is not registered`);
  return kernel;
}

/** Registers each override in place of the shipped kernel (kept for shippedKernel); a name already overridden is left as it is. */
export function overrideWebgpuKernels(overrides: readonly [string, Kernel][]): void {
  for (const [name, kernelFunc] of overrides) {
    const config = tf.getKernel(name, BACKEND);
    if (config === undefined || shipped.has(name)) continue;
    shipped.set(name, config.kernelFunc as Kernel);
    tf.unregisterKernel(name, BACKEND);
    tf.registerKernel({ ...config, kernelFunc: kernelFunc as unknown as tf.KernelFunc });
  }
}

/** Runs shipped kernels and frees the intermediates it made, all but the ones asked for. */
export class KernelScope {
  private owned: tf.TensorInfo[] = [];
  constructor(readonly backend: tf.KernelBackend) {}

  run(name: string, inputs: tf.NamedTensorInfoMap, attrs: object = {}): tf.TensorInfo {
    const out = shippedKernel(name)({ inputs, backend: this.backend, attrs: attrs as tf.NamedAttrMap }) as tf.TensorInfo;
    this.owned.push(out);
    return out;
  }

  reshape(x: tf.TensorInfo, shape: number[]): tf.TensorInfo {
    return this.run('Reshape', { x }, { shape });
  }

  /** A point to free back to (releaseSince), so a loop holds one iteration's intermediates at a time. */
  mark(): number {
    return this.owned.length;
  }

  /** Frees what was made since `mark`, except `survivors`. */
  releaseSince(mark: number, ...survivors: tf.TensorInfo[]): void {
    const recent = this.owned.splice(mark);
    for (const info of recent) {
      if (survivors.includes(info)) this.owned.push(info);
      else this.backend.disposeData(info.dataId);
    }
  }

  /** Frees one intermediate now. */
  free(info: tf.TensorInfo): void {
    const at = this.owned.indexOf(info);
    if (at < 0) return;
    this.owned.splice(at, 1);
    this.backend.disposeData(info.dataId);
  }

  /** Frees every intermediate except `result`, which is returned. */
  keep(result: tf.TensorInfo): tf.TensorInfo {
    for (const info of this.owned) if (info !== result) this.backend.disposeData(info.dataId);
    this.owned = [];
    return result;
  }
}
