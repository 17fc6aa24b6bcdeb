/**
 * Custom tfjs-layers layers for the architectural blind-spot networks (models/laine19.ts,
 * models/dbsn.ts), 2D (NHWC) and 3D (NDHWC):
 * - ShiftDown, PadTop, CropBottom: shift feature maps towards higher index along the first
 *   spatial axis, add zero rows at its start, drop rows at its end: Laine et al.'s half-plane
 *   receptive field (a convolution between PadTop and CropBottom only looks upward).
 * - Orient: a proper rotation of the spatial axes (axis permutation + flips) or its inverse, to
 *   point each branch of a rotation-shared network in one direction.
 * - CentreMaskedConv: a 'same' convolution whose kernel centre is held at zero (D-BSN).
 * - DilatedConv: a 'same' dilated convolution made of spaceToBatchND -> conv -> batchToSpaceND.
 *   tfjs has no gradient for convolutions with dilation > 1; this formulation is exact (the
 *   input is zero-padded to a multiple of the dilation first, so each phase image's zero border
 *   is the dilated conv's zero border) and every op in it has a gradient on cpu and wasm.
 *
 * Every op used has a registered gradient and a wasm kernel (3D convolutions need
 * registerWasmTrainingKernels from backend/). Importing this module registers the layers with
 * tf.serialization, so saved models load with tf.loadLayersModel.
 */
import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';
import { product, singleShape, singleTensor, type Kwargs, type ShapeWithNulls } from './layers.js';

type LayerArgs = NonNullable<ConstructorParameters<typeof tfl.layers.Layer>[0]>;
/**
 * Shifts `x` by `shift` towards higher index along `axis`: out[i] = x[i - shift], zero for
 * i < shift. Done on a rank-3 view [before, length, after] so it is the same few ops at any rank.
 */
export function shiftAlongAxis(x: tf.Tensor, axis: number, shift: number): tf.Tensor {
  return tf.tidy(() => {
    const before = product(x.shape.slice(0, axis));
    const length = x.shape[axis];
    const after = product(x.shape.slice(axis + 1));
    if (shift >= length) return tf.zerosLike(x);
    const x3 = tf.reshape(x, [before, length, after]);
    const kept = tf.slice(x3, [0, 0, 0], [before, length - shift, after]);
    const padded = tf.pad(kept, [
      [0, 0],
      [shift, 0],
      [0, 0],
    ]);
    return tf.reshape(padded, x.shape);
  });
}

export interface RowsArgs extends LayerArgs {
  /** Rows (first spatial axis) to add or remove; >= 1. */
  rows: number;
}

function checkRows(rows: number, what: string): void {
  if (!Number.isInteger(rows) || rows < 1) throw new RangeError(`${what} rows must be an integer >= 1, got ${rows}`);
}

function resizedRows(inputShape: tfl.Shape | tfl.Shape[], change: number): tfl.Shape {
  const shape = singleShape(inputShape).slice();
  const rows = shape[1];
  shape[1] = rows == null ? null : rows + change;
  return shape;
}

/** A layer that adds (`sign` +1) or removes (-1) `rows` rows of the first spatial axis. */
abstract class RowsLayer extends tfl.layers.Layer {
  readonly rows: number;

  constructor(
    args: RowsArgs,
    private readonly sign: 1 | -1,
    what: string,
  ) {
    super(args);
    checkRows(args.rows, what);
    this.rows = args.rows;
  }

  override computeOutputShape(inputShape: tfl.Shape | tfl.Shape[]): tfl.Shape {
    return resizedRows(inputShape, this.sign * this.rows);
  }

  override getConfig(): tf.serialization.ConfigDict {
    return { ...super.getConfig(), rows: this.rows };
  }
}

/** Adds `rows` zero rows before the first spatial axis (H in 2D, D in 3D) of NHWC / NDHWC input. */
export class PadTop extends RowsLayer {
  static className = 'BlindspotPadTop';

  constructor(args: RowsArgs) {
    super(args, 1, 'PadTop');
  }

  override call(inputs: tf.Tensor | tf.Tensor[], _kwargs: Kwargs): tf.Tensor {
    return tf.tidy(() => {
      const x = singleTensor(inputs);
      const shape = x.shape as number[];
      const after = product(shape.slice(2));
      const padded = tf.pad(tf.reshape(x, [shape[0], shape[1], after]), [
        [0, 0],
        [this.rows, 0],
        [0, 0],
      ]);
      return tf.reshape(padded, [shape[0], shape[1] + this.rows, ...shape.slice(2)]);
    });
  }
}

/** Removes the last `rows` rows of the first spatial axis of NHWC / NDHWC input. */
export class CropBottom extends RowsLayer {
  static className = 'BlindspotCropBottom';

  constructor(args: RowsArgs) {
    super(args, -1, 'CropBottom');
  }

  override call(inputs: tf.Tensor | tf.Tensor[], _kwargs: Kwargs): tf.Tensor {
    return tf.tidy(() => {
      const x = singleTensor(inputs);
      const shape = x.shape as number[];
      const kept = shape[1] - this.rows;
      if (kept < 1) throw new RangeError(`CropBottom: cannot remove ${this.rows} of ${shape[1]} rows`);
      const after = product(shape.slice(2));
      const cropped = tf.slice(tf.reshape(x, [shape[0], shape[1], after]), [0, 0, 0], [shape[0], kept, after]);
      return tf.reshape(cropped, [shape[0], kept, ...shape.slice(2)]);
    });
  }
}

export interface ShiftDownArgs extends LayerArgs {
  /** Rows (first spatial axis) to shift by; >= 1. */
  shift: number;
}

/**
 * Shifts NHWC / NDHWC feature maps `shift` rows down (towards higher index on spatial axis 0:
 * H in 2D, D in 3D): zero rows in at the top, the last rows dropped. Before a pooling it keeps a
 * pooled row from seeing the row below it; at the end of a branch it excludes the row itself.
 */
export class ShiftDown extends tfl.layers.Layer {
  static className = 'BlindspotShiftDown';
  readonly shift: number;

  constructor(args: ShiftDownArgs) {
    super(args);
    if (!Number.isInteger(args.shift) || args.shift < 1) throw new RangeError(`ShiftDown shift must be an integer >= 1, got ${args.shift}`);
    this.shift = args.shift;
  }

  override computeOutputShape(inputShape: tfl.Shape | tfl.Shape[]): tfl.Shape {
    return singleShape(inputShape);
  }

  override call(inputs: tf.Tensor | tf.Tensor[], _kwargs: Kwargs): tf.Tensor {
    return shiftAlongAxis(singleTensor(inputs), 1, this.shift);
  }

  override getConfig(): tf.serialization.ConfigDict {
    return { ...super.getConfig(), shift: this.shift };
  }
}

/** A rotation of the spatial axes: transpose by `permutation`, then reverse the listed axes (of the result). */
export interface SpatialOrientation {
  /** Spatial axis order of the result (a permutation of 0..dims-1). */
  permutation: number[];
  /** Spatial axes of the permuted result that are reversed. */
  flips: number[];
}

function validateOrientation(dims: number, o: SpatialOrientation): void {
  const sorted = [...o.permutation].sort((a, b) => a - b);
  if (o.permutation.length !== dims || sorted.some((v, i) => v !== i)) throw new RangeError(`orientation permutation must be a permutation of 0..${dims - 1}, got [${o.permutation.join(', ')}]`);
  if (o.flips.some((a) => !Number.isInteger(a) || a < 0 || a >= dims) || new Set(o.flips).size !== o.flips.length) {
    throw new RangeError(`orientation flips must be distinct spatial axes < ${dims}, got [${o.flips.join(', ')}]`);
  }
}

function inversePermutation(p: readonly number[]): number[] {
  const inverse = new Array<number>(p.length);
  p.forEach((v, i) => (inverse[v] = i));
  return inverse;
}

/** Applies `o` (or its inverse) to an NHWC / NDHWC tensor. */
export function orient(x: tf.Tensor, o: SpatialOrientation, inverse: boolean): tf.Tensor {
  return tf.tidy(() => {
    const dims = x.rank - 2;
    const full = (p: readonly number[]): number[] => [0, ...p.map((a) => a + 1), dims + 1];
    const identity = o.permutation.every((v, i) => v === i);
    const flipAxes = o.flips.map((a) => a + 1);
    // A new tensor even for the identity: a layer must not hand back its input (the executor disposes inputs).
    if (identity && flipAxes.length === 0) return tf.clone(x);
    if (!inverse) {
      const permuted = identity ? x : tf.transpose(x, full(o.permutation));
      return flipAxes.length > 0 ? tf.reverse(permuted, flipAxes) : permuted;
    }
    const unflipped = flipAxes.length > 0 ? tf.reverse(x, flipAxes) : x;
    return identity ? unflipped : tf.transpose(unflipped, full(inversePermutation(o.permutation)));
  });
}

export interface OrientArgs extends LayerArgs, SpatialOrientation {
  dims: 2 | 3;
  /** Apply the inverse rotation (rotate a branch's output back). */
  inverse: boolean;
}

/** Rotates the spatial axes of NHWC / NDHWC input (or rotates back, with `inverse`). */
export class Orient extends tfl.layers.Layer {
  static className = 'BlindspotOrient';
  readonly dims: 2 | 3;
  readonly permutation: number[];
  readonly flips: number[];
  readonly inverse: boolean;

  constructor(args: OrientArgs) {
    super(args);
    validateOrientation(args.dims, args);
    this.dims = args.dims;
    this.permutation = [...args.permutation];
    this.flips = [...args.flips];
    this.inverse = args.inverse;
  }

  override computeOutputShape(inputShape: tfl.Shape | tfl.Shape[]): tfl.Shape {
    const shape = singleShape(inputShape);
    const spatial = shape.slice(1, 1 + this.dims);
    const order = this.inverse ? inversePermutation(this.permutation) : this.permutation;
    return [shape[0], ...order.map((a) => spatial[a]), ...shape.slice(1 + this.dims)];
  }

  override call(inputs: tf.Tensor | tf.Tensor[], _kwargs: Kwargs): tf.Tensor {
    return orient(singleTensor(inputs), { permutation: this.permutation, flips: this.flips }, this.inverse);
  }

  override getConfig(): tf.serialization.ConfigDict {
    return { ...super.getConfig(), dims: this.dims, permutation: this.permutation, flips: this.flips, inverse: this.inverse };
  }
}

export interface ConvLayerArgs extends LayerArgs {
  dims: 2 | 3;
  filters: number;
  /** Kernel side, odd (same on every spatial axis). */
  kernelSize: number;
  /** Seed of the He-normal kernel initialiser (weights loaded from a file replace it). */
  seed: number;
  useBias?: boolean;
}

/** Base of the convolutions below: kernel [k..k, Cin, filters] (He normal, seeded), optional bias, 'same' output size. */
abstract class SeededConv extends tfl.layers.Layer {
  readonly dims: 2 | 3;
  readonly filters: number;
  readonly kernelSize: number;
  readonly seed: number;
  readonly useBias: boolean;
  protected kernel!: tfl.LayerVariable;
  protected bias: tfl.LayerVariable | null = null;

  constructor(args: ConvLayerArgs) {
    super(args);
    if (args.dims !== 2 && args.dims !== 3) throw new RangeError(`convolution dims must be 2 or 3, got ${String(args.dims)}`);
    if (!Number.isInteger(args.filters) || args.filters < 1) throw new RangeError(`convolution filters must be a positive integer, got ${args.filters}`);
    if (!Number.isInteger(args.kernelSize) || args.kernelSize < 1 || args.kernelSize % 2 === 0) throw new RangeError(`convolution kernelSize must be a positive odd integer, got ${args.kernelSize}`);
    this.dims = args.dims;
    this.filters = args.filters;
    this.kernelSize = args.kernelSize;
    this.seed = args.seed;
    this.useBias = args.useBias ?? true;
  }

  override build(inputShape: tfl.Shape | tfl.Shape[]): void {
    const shape = singleShape(inputShape);
    const channels = shape[shape.length - 1];
    if (channels == null) throw new RangeError(`${this.getClassName()} needs a known channel count`);
    const kernelShape = [...new Array<number>(this.dims).fill(this.kernelSize), channels, this.filters];
    this.kernel = this.addWeight('kernel', kernelShape, 'float32', tfl.initializers.heNormal({ seed: this.seed }), undefined, true);
    if (this.useBias) this.bias = this.addWeight('bias', [this.filters], 'float32', tfl.initializers.zeros(), undefined, true);
    this.built = true;
  }

  override computeOutputShape(inputShape: tfl.Shape | tfl.Shape[]): tfl.Shape {
    const shape = singleShape(inputShape).slice();
    shape[shape.length - 1] = this.filters;
    return shape;
  }

  protected convolveSame(x: tf.Tensor, kernel: tf.Tensor): tf.Tensor {
    const y = this.dims === 2 ? tf.conv2d(x as tf.Tensor4D, kernel as tf.Tensor4D, 1, 'same') : tf.conv3d(x as tf.Tensor5D, kernel as tf.Tensor5D, 1, 'same');
    return this.bias === null ? y : tf.add(y, this.bias.read());
  }

  override getConfig(): tf.serialization.ConfigDict {
    return { ...super.getConfig(), dims: this.dims, filters: this.filters, kernelSize: this.kernelSize, seed: this.seed, useBias: this.useBias };
  }
}

/** 1 everywhere except 0 at the kernel centre, as a [k..k, 1, 1] array broadcast over channels. */
function centreMask(dims: 2 | 3, kernelSize: number): { values: Float32Array; shape: number[] } {
  const taps = kernelSize ** dims;
  const values = new Float32Array(taps).fill(1);
  values[(taps - 1) / 2] = 0;
  return { values, shape: [...new Array<number>(dims).fill(kernelSize), 1, 1] };
}

/**
 * D-BSN's centrally masked convolution: the kernel is multiplied by a fixed 0/1 mask with 0 at
 * the centre tap before every use, so the output at a pixel never depends on the input there
 * (the stored centre weights get zero gradient and stay unused).
 */
export class CentreMaskedConv extends SeededConv {
  static className = 'BlindspotCentreMaskedConv';

  override call(inputs: tf.Tensor | tf.Tensor[], _kwargs: Kwargs): tf.Tensor {
    return tf.tidy(() => {
      const { values, shape } = centreMask(this.dims, this.kernelSize);
      const maskedKernel = tf.mul(this.kernel.read(), tf.tensor(values, shape));
      return this.convolveSame(singleTensor(inputs), maskedKernel);
    });
  }
}

export interface DilatedConvArgs extends ConvLayerArgs {
  /** Spacing between kernel taps, >= 1 (1 is a plain convolution). */
  dilation: number;
}

/**
 * out = conv(x, kernel, 'same', dilation) + bias, computed as spaceToBatchND(d) -> 'same' conv ->
 * batchToSpaceND(d) on x zero-padded at the end of each spatial axis to a multiple of d (then
 * cropped back): the d^dims phase images are convolved independently, which is what a dilated
 * convolution does.
 */
export class DilatedConv extends SeededConv {
  static className = 'BlindspotDilatedConv';
  readonly dilation: number;

  constructor(args: DilatedConvArgs) {
    super(args);
    if (!Number.isInteger(args.dilation) || args.dilation < 1) throw new RangeError(`DilatedConv dilation must be an integer >= 1, got ${args.dilation}`);
    this.dilation = args.dilation;
  }

  override call(inputs: tf.Tensor | tf.Tensor[], _kwargs: Kwargs): tf.Tensor {
    return tf.tidy(() => {
      const x = singleTensor(inputs);
      const kernel = this.kernel.read();
      const d = this.dilation;
      if (d === 1) return this.convolveSame(x, kernel);
      const spatial = x.shape.slice(1, 1 + this.dims);
      const padding = spatial.map((s) => [0, (d - (s % d)) % d]);
      const block = new Array<number>(this.dims).fill(d);
      const phases = tf.spaceToBatchND(x, block, padding);
      return tf.batchToSpaceND(this.convolveSame(phases, kernel), block, padding);
    });
  }

  override getConfig(): tf.serialization.ConfigDict {
    return { ...super.getConfig(), dilation: this.dilation };
  }
}

tf.serialization.registerClass(PadTop);
tf.serialization.registerClass(CropBottom);
tf.serialization.registerClass(ShiftDown);
tf.serialization.registerClass(Orient);
tf.serialization.registerClass(CentreMaskedConv);
tf.serialization.registerClass(DilatedConv);
