/**
 * Rank-5 (NDHWC) cases that @tensorflow/tfjs-backend-webgpu 4.22 gets wrong or refuses, which 3D
 * networks need; each is rewritten here on rank <= 4 views with the backend's own kernels, and
 * every other case goes to the shipped kernel unchanged. Measured against tfjs-cpu on llvmpipe:
 * - binary ops with a lower-rank operand (x + bias[C]): the shared-memory WGSL indexes a `vec5`
 *   and fails to compile, leaving garbage -> the operand is reshaped to rank 5 first;
 * - Select (tf.where; LeakyRelu's gradient): "Where for rank 5 is not yet supported" -> on flat views;
 * - PadV2: wrong values (same `vec5` WGSL) -> axes 0-1 on a rank-3 view, then 2-4 on a rank-4 view;
 * - Reverse: reshapes to rank 4 and throws -> one axis at a time on a [before, length, after] view;
 * - Tile: reads the input synchronously (throws in Node) -> repeated Concat along each tiled axis;
 * - SpaceToBatchND / BatchToSpaceND (dilated 3D convolutions): not implemented -> the rank-4
 *   kernel on the H, W axes and a reshape + transpose for D, in tfjs's own batch order.
 * Intermediates are released with disposeData, as tfjs's kernels do.
 */
import * as tf from '@tensorflow/tfjs-core';
import { KernelScope as Scope, overrideWebgpuKernels, shippedKernel as original, type Kernel } from './webgpuScope.js';

const size = (shape: readonly number[]): number => shape.reduce((a, b) => a * b, 1);

const BINARY_KERNELS = [
  'Add', 'Sub', 'Multiply', 'RealDiv', 'Maximum', 'Minimum', 'SquaredDifference', 'Pow', 'FloorDiv', 'Mod', 'Atan2',
  'Greater', 'GreaterEqual', 'Less', 'LessEqual', 'Equal', 'NotEqual', 'LogicalAnd', 'LogicalOr', 'Prelu',
] as const;

function binary(name: string): Kernel {
  return (args) => {
    const names = Object.keys(args.inputs);
    const infos = names.map((n) => args.inputs[n] as tf.TensorInfo);
    const rank = Math.max(...infos.map((i) => i.shape.length));
    if (rank !== 5 || infos.every((i) => i.shape.length === 5)) return original(name)(args);
    const scope = new Scope(args.backend);
    const inputs: tf.NamedTensorInfoMap = {};
    names.forEach((n, k) => {
      const info = infos[k];
      inputs[n] = info.shape.length === 5 ? info : scope.reshape(info, [...new Array<number>(5 - info.shape.length).fill(1), ...info.shape]);
    });
    return scope.keep(scope.run(name, inputs, args.attrs));
  };
}

const select: Kernel = (args) => {
  const { condition, t, e } = args.inputs as Record<'condition' | 't' | 'e', tf.TensorInfo>;
  if (t.shape.length !== 5) return original('Select')(args);
  const scope = new Scope(args.backend);
  const flat = (info: tf.TensorInfo): tf.TensorInfo => scope.reshape(info, [size(info.shape)]);
  const out = scope.run('Select', { condition: flat(condition), t: flat(t), e: flat(e) });
  return scope.keep(scope.reshape(out, [...t.shape]));
};

const padV2: Kernel = (args) => {
  const x = args.inputs['x'] as tf.TensorInfo;
  const { paddings, constantValue } = args.attrs as unknown as { paddings: [number, number][]; constantValue: number };
  if (x.shape.length !== 5) return original('PadV2')(args);
  const [n, d, h, w, c] = x.shape;
  const scope = new Scope(args.backend);
  const outer = scope.run('PadV2', { x: scope.reshape(x, [n, d, h * w * c]) }, { paddings: [paddings[0], paddings[1], [0, 0]], constantValue });
  const [n2, d2] = outer.shape;
  const inner = scope.run('PadV2', { x: scope.reshape(outer, [n2 * d2, h, w, c]) }, { paddings: [[0, 0], paddings[2], paddings[3], paddings[4]], constantValue });
  return scope.keep(scope.reshape(inner, [n2, d2, ...inner.shape.slice(1)]));
};

const reverse: Kernel = (args) => {
  const x = args.inputs['x'] as tf.TensorInfo;
  if (x.shape.length !== 5) return original('Reverse')(args);
  const { dims } = args.attrs as unknown as { dims: number | number[] };
  const axes = tf.util.parseAxisParam(dims, x.shape);
  const scope = new Scope(args.backend);
  let y = scope.reshape(x, [...x.shape]);
  for (const axis of axes) {
    const view = [size(x.shape.slice(0, axis)), x.shape[axis], size(x.shape.slice(axis + 1))];
    y = scope.reshape(scope.run('Reverse', { x: scope.reshape(y, view) }, { dims: [1] }), [...x.shape]);
  }
  return scope.keep(y);
};

const tile: Kernel = (args) => {
  const x = args.inputs['x'] as tf.TensorInfo;
  if (x.shape.length < 5) return original('Tile')(args);
  const { reps } = args.attrs as unknown as { reps: number[] };
  const scope = new Scope(args.backend);
  let y = scope.reshape(x, [...x.shape]);
  reps.forEach((r, axis) => {
    if (r > 1) y = scope.run('Concat', new Array<tf.TensorInfo>(r).fill(y) as unknown as tf.NamedTensorInfoMap, { axis });
  });
  return scope.keep(y);
};

interface SpaceBatchAttrs {
  blockShape: number[];
  paddings?: [number, number][];
  crops?: [number, number][];
}

/** tfjs's order: out[((pd*bh + ph)*bw + pw)*N + n, z, y, x, c] = padded[n, z*bd+pd, y*bh+ph, x*bw+pw, c]. */
const spaceToBatch: Kernel = (args) => {
  const x = args.inputs['x'] as tf.TensorInfo;
  const { blockShape, paddings } = args.attrs as unknown as Required<Pick<SpaceBatchAttrs, 'blockShape' | 'paddings'>>;
  if (x.shape.length !== 5 || blockShape.length !== 3) return original('SpaceToBatchND')(args);
  const [n, d, h, w, c] = x.shape;
  const [bd, bh, bw] = blockShape;
  const scope = new Scope(args.backend);
  // H, W: batch index ((ph*bw + pw)*N + n)*D + z.
  const hw = scope.run('SpaceToBatchND', { x: scope.reshape(x, [n * d, h, w, c]) }, { blockShape: [bh, bw], paddings: [paddings[1], paddings[2]] });
  const [, h2, w2] = hw.shape;
  const m = bh * bw * n;
  const padded = scope.run('PadV2', { x: scope.reshape(hw, [m, d, h2 * w2, c]) }, { paddings: [[0, 0], paddings[0], [0, 0], [0, 0]], constantValue: 0 });
  const d2 = padded.shape[1] / bd;
  const phases = scope.run('Transpose', { x: scope.reshape(padded, [m, d2, bd, h2 * w2, c]) }, { perm: [2, 0, 1, 3, 4] });
  return scope.keep(scope.reshape(phases, [bd * m, d2, h2, w2, c]));
};

const batchToSpace: Kernel = (args) => {
  const x = args.inputs['x'] as tf.TensorInfo;
  const { blockShape, crops } = args.attrs as unknown as Required<Pick<SpaceBatchAttrs, 'blockShape' | 'crops'>>;
  if (x.shape.length !== 5 || blockShape.length !== 3) return original('BatchToSpaceND')(args);
  const [b, d2, h2, w2, c] = x.shape;
  const [bd, bh, bw] = blockShape;
  const m = b / bd;
  const scope = new Scope(args.backend);
  const depthMajor = scope.run('Transpose', { x: scope.reshape(x, [bd, m, d2, h2 * w2, c]) }, { perm: [1, 2, 0, 3, 4] });
  const dFull = d2 * bd;
  const d = dFull - crops[0][0] - crops[0][1];
  const cropped = scope.run('Slice', { x: scope.reshape(depthMajor, [m, dFull, h2 * w2, c]) }, { begin: [0, crops[0][0], 0, 0], size: [m, d, h2 * w2, c] });
  const n = m / (bh * bw);
  const hw = scope.run('BatchToSpaceND', { x: scope.reshape(cropped, [m * d, h2, w2, c]) }, { blockShape: [bh, bw], crops: [crops[1], crops[2]] });
  return scope.keep(scope.reshape(hw, [n, d, ...hw.shape.slice(1)]));
};

/**
 * Wraps the shipped webgpu kernels with the rank-5 paths above. Call after
 * @tensorflow/tfjs-backend-webgpu is imported; safe to call more than once.
 */
export function registerWebgpuRank5Kernels(): void {
  overrideWebgpuKernels([
    ...BINARY_KERNELS.map((name): [string, Kernel] => [name, binary(name)]),
    ['Select', select],
    ['PadV2', padV2],
    ['Reverse', reverse],
    ['Tile', tile],
    ['SpaceToBatchND', spaceToBatch],
    ['BatchToSpaceND', batchToSpace],
  ]);
}
