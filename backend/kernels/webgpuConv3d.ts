/**
 * Conv3D and its two gradients on webgpu, computed with the backend's 2D convolution kernels.
 *
 * Why: tfjs-backend-webgpu 4.22 runs Conv3D, Conv3DBackpropInputV2 and Conv3DBackpropFilterV2 as
 * "naive" WGSL programs (one thread per output element looping over the whole kernel), while its
 * Conv2D and Conv2DBackpropInput are tiled matrix products. Measured on llvmpipe (2 cores, loaded),
 * one training step of the default 3D D-BSN (32 filters, 4 blocks; batch 2 of 8^3) took minutes
 * in those three kernels; written as 2D convolutions below it takes seconds (docs/webgpu.md).
 *
 * For stride 1 and dilation 1 (every 3D convolution our networks run; others go to the shipped
 * kernels), with x zero-padded along depth to xp and the kernel split by depth tap dz:
 * - forward:   y[:, z] = sum_dz conv2d(xp[:, z + dz], w[dz])  (H and W padding inside conv2d);
 * - dx:        xp[:, z + dz] += conv2dBackpropInput(dy[:, z], w[dz]), then the depth padding cropped;
 * - dw[dz]:    the filter gradient as a 2D convolution with the roles swapped (channels as batch,
 *              batch x depth as channels, dy as the filter): conv2d(xp[:, dz:]^T, dy^T), 'valid'.
 *   (Conv2DBackpropFilter itself is naive too, so it is not used.)
 * Each sums the same products as the 3D kernel, in another order (float32 rounding differs, ~1e-6).
 */
import * as tf from '@tensorflow/tfjs-core';
import { KernelScope, shippedKernel, type Kernel, overrideWebgpuKernels } from './webgpuScope.js';

interface Conv3dGeometry {
  n: number;
  /** Input depth, height, width, channels. */
  d: number;
  h: number;
  w: number;
  c: number;
  /** Kernel depth, height, width; output channels. */
  kd: number;
  kh: number;
  kw: number;
  f: number;
  outD: number;
  outH: number;
  outW: number;
  front: number;
  back: number;
  /** Explicit H and W padding of the 2D convolutions, NHWC. */
  pad2d: [[number, number], [number, number], [number, number], [number, number]];
}

/** The geometry of a stride-1, dilation-1 NDHWC convolution, or null for any other (left to the shipped kernel). */
function geometry(xShape: number[], filterShape: number[], strides: unknown, pad: unknown, dilations: unknown): Conv3dGeometry | null {
  const info = tf.backend_util.computeConv3DInfo(
    xShape as [number, number, number, number, number],
    filterShape as [number, number, number, number, number],
    strides as [number, number, number],
    (dilations ?? 1) as [number, number, number],
    pad as 'same' | 'valid',
  );
  const ones = (...v: number[]): boolean => v.every((k) => k === 1);
  if (!ones(info.strideDepth, info.strideHeight, info.strideWidth, info.dilationDepth, info.dilationHeight, info.dilationWidth)) return null;
  const p = info.padInfo;
  return {
    n: info.batchSize,
    d: info.inDepth,
    h: info.inHeight,
    w: info.inWidth,
    c: info.inChannels,
    kd: info.filterDepth,
    kh: info.filterHeight,
    kw: info.filterWidth,
    f: info.outChannels,
    outD: info.outDepth,
    outH: info.outHeight,
    outW: info.outWidth,
    front: p.front,
    back: p.back,
    pad2d: [
      [0, 0],
      [p.top, p.bottom],
      [p.left, p.right],
      [0, 0],
    ],
  };
}

const conv2dAttrs = (pad: Conv3dGeometry['pad2d'] | 'valid'): object => ({ strides: [1, 1], pad, dataFormat: 'NHWC', dilations: [1, 1] });

/** x [N, D, H, W, C] zero-padded along depth, as a [N, front + D + back, H*W*C] view. */
function padDepth(scope: KernelScope, x: tf.TensorInfo, g: Conv3dGeometry): tf.TensorInfo {
  const flat = scope.reshape(x, [g.n, g.d, g.h * g.w * g.c]);
  if (g.front === 0 && g.back === 0) return flat;
  return scope.run('PadV2', { x: flat }, { paddings: [[0, 0], [g.front, g.back], [0, 0]], constantValue: 0 });
}

/** The depth-slab of the padded input that depth tap dz reads: [N * outD, H, W, C]. */
function slab(scope: KernelScope, xp: tf.TensorInfo, g: Conv3dGeometry, dz: number): tf.TensorInfo {
  const hwc = g.h * g.w * g.c;
  const whole = xp.shape[1] === g.outD; // kernel depth 1, no depth padding: no copy
  return scope.reshape(whole ? xp : scope.run('Slice', { x: xp }, { begin: [0, dz, 0], size: [g.n, g.outD, hwc] }), [g.n * g.outD, g.h, g.w, g.c]);
}

/** Depth tap dz of the filter [kd, kh, kw, C, F] as a 2D filter [kh, kw, C, F]. */
function filterTap(scope: KernelScope, filter: tf.TensorInfo, g: Conv3dGeometry, dz: number): tf.TensorInfo {
  const tap = g.kh * g.kw * g.c * g.f;
  if (g.kd === 1) return scope.reshape(filter, [g.kh, g.kw, g.c, g.f]);
  const flat = scope.reshape(filter, [g.kd, tap]);
  return scope.reshape(scope.run('Slice', { x: flat }, { begin: [dz, 0], size: [1, tap] }), [g.kh, g.kw, g.c, g.f]);
}

/** sum + term (or term, first), freeing the iteration's other intermediates and the previous sum. */
function accumulate(scope: KernelScope, mark: number, sum: tf.TensorInfo | null, term: tf.TensorInfo): tf.TensorInfo {
  const next = sum === null ? term : scope.run('Add', { a: sum, b: term });
  scope.releaseSince(mark, next);
  if (sum !== null) scope.free(sum);
  return next;
}

const conv3d: Kernel = (args) => {
  const { x, filter } = args.inputs as Record<'x' | 'filter', tf.TensorInfo>;
  const { strides, pad, dilations, dataFormat } = args.attrs as Record<string, unknown>;
  const g = dataFormat === undefined || dataFormat === 'NDHWC' ? geometry(x.shape, filter.shape, strides, pad, dilations) : null;
  if (g === null) return shippedKernel('Conv3D')(args);
  const scope = new KernelScope(args.backend);
  const xp = padDepth(scope, x, g);
  let sum: tf.TensorInfo | null = null;
  for (let dz = 0; dz < g.kd; dz++) {
    const mark = scope.mark();
    const y = scope.run('Conv2D', { x: slab(scope, xp, g, dz), filter: filterTap(scope, filter, g, dz) }, conv2dAttrs(g.pad2d));
    sum = accumulate(scope, mark, sum, y);
  }
  return scope.keep(scope.reshape(sum!, [g.n, g.outD, g.outH, g.outW, g.f]));
};

const conv3dBackpropInput: Kernel = (args) => {
  const { dy, filter } = args.inputs as Record<'dy' | 'filter', tf.TensorInfo>;
  const { strides, pad, inputShape } = args.attrs as Record<string, unknown>;
  const g = geometry(inputShape as number[], filter.shape, strides, pad, 1);
  if (g === null) return shippedKernel('Conv3DBackpropInputV2')(args);
  const scope = new KernelScope(args.backend);
  const hwc = g.h * g.w * g.c;
  const dy2d = scope.reshape(dy, [g.n * g.outD, g.outH, g.outW, g.f]);
  let sum: tf.TensorInfo | null = null;
  for (let dz = 0; dz < g.kd; dz++) {
    // Tap dz carries dy[:, z] to padded depth z + dz, i.e. to input depth z + dz - front.
    const first = dz - g.front;
    const begin = Math.max(0, -first);
    const end = Math.min(g.outD, g.d - first);
    if (end <= begin) continue;
    const mark = scope.mark();
    const dxTap = scope.run('Conv2DBackpropInput', { dy: dy2d, filter: filterTap(scope, filter, g, dz) }, { ...conv2dAttrs(g.pad2d), inputShape: [g.n * g.outD, g.h, g.w, g.c] });
    const flat = scope.reshape(dxTap, [g.n, g.outD, hwc]);
    const kept = begin === 0 && end === g.outD ? flat : scope.run('Slice', { x: flat }, { begin: [0, begin, 0], size: [g.n, end - begin, hwc] });
    const [before, after] = [first + begin, g.d - (first + end)];
    const placed = before === 0 && after === 0 ? kept : scope.run('PadV2', { x: kept }, { paddings: [[0, 0], [before, after], [0, 0]], constantValue: 0 });
    sum = accumulate(scope, mark, sum, placed);
  }
  sum ??= scope.run('Fill', {}, { shape: [g.n, g.d, hwc], value: 0, dtype: 'float32' });
  return scope.keep(scope.reshape(sum, [g.n, g.d, g.h, g.w, g.c]));
};

const conv3dBackpropFilter: Kernel = (args) => {
  const { x, dy } = args.inputs as Record<'x' | 'dy', tf.TensorInfo>;
  const { strides, pad, filterShape } = args.attrs as Record<string, unknown>;
  const g = geometry(x.shape, filterShape as number[], strides, pad, 1);
  if (g === null) return shippedKernel('Conv3DBackpropFilterV2')(args);
  const scope = new KernelScope(args.backend);
  if (g.kd * g.kh * g.kw === 1) {
    // A pointwise convolution: dw = x^T dy over every voxel, one matrix product.
    const voxels = g.n * g.d * g.h * g.w;
    const product = scope.run('BatchMatMul', { a: scope.reshape(x, [1, voxels, g.c]), b: scope.reshape(dy, [1, voxels, g.f]) }, { transposeA: true, transposeB: false });
    return scope.keep(scope.reshape(product, [1, 1, 1, g.c, g.f]));
  }
  const batch = g.n * g.outD;
  // dy as a 2D filter [outH, outW, N*outD, F]: the "input channels" are the batch and depth positions.
  const dyFilter = scope.run('Transpose', { x: scope.reshape(dy, [batch, g.outH, g.outW, g.f]) }, { perm: [1, 2, 0, 3] });
  const xp = padDepth(scope, x, g);
  const taps: tf.TensorInfo[] = [];
  for (let dz = 0; dz < g.kd; dz++) {
    const mark = scope.mark();
    // The slab with channels as the batch: [C, H, W, N*outD]; 'valid' after H, W padding gives [C, kh, kw, F].
    const spatial = scope.run('PadV2', { x: slab(scope, xp, g, dz) }, { paddings: g.pad2d, constantValue: 0 });
    const channelsFirst = scope.run('Transpose', { x: spatial }, { perm: [3, 1, 2, 0] });
    const grad = scope.run('Conv2D', { x: channelsFirst, filter: dyFilter }, conv2dAttrs('valid'));
    const tap = scope.run('Transpose', { x: grad }, { perm: [1, 2, 0, 3] });
    taps.push(scope.reshape(tap, [1, g.kh * g.kw * g.c * g.f]));
    scope.releaseSince(mark, taps[taps.length - 1]);
  }
  const all = taps.length === 1 ? taps[0] : scope.run('Concat', taps as unknown as tf.NamedTensorInfoMap, { axis: 0 });
  return scope.keep(scope.reshape(all, [g.kd, g.kh, g.kw, g.c, g.f]));
};

/** Replaces the naive webgpu Conv3D kernels (stride 1, dilation 1) with the 2D formulations above; safe to call more than once. */
export function registerWebgpuConv3dKernels(): void {
  overrideWebgpuKernels([
    ['Conv3D', conv3d],
    ['Conv3DBackpropInputV2', conv3dBackpropInput],
    ['Conv3DBackpropFilterV2', conv3dBackpropFilter],
  ]);
}
