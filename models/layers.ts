/**
 * Custom tfjs-layers layers the U-Net needs: N2V2's max-blur-pool (2D and 3D), nearest upsampling
 * (2D and 3D), and batch normalisation for rank-5 (NDHWC) tensors.
 *
 * Every layer is built from plain ops of rank <= 4 (reshape, pad, slice, concat, maximum, add, mul,
 * mean) so it has gradients on every backend and needs no kernel that wasm lacks (tfjs has no 3D
 * depthwise convolution, and Tile's gradient stops at rank 4). Importing this module registers the
 * layers with tf.serialization, so a saved model.json that uses them loads with tf.loadLayersModel.
 */
import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';

type LayerArgs = ConstructorParameters<typeof tfl.layers.Layer>[0];
type Kwargs = Record<string, unknown>;
type ShapeWithNulls = (number | null)[];

function singleTensor(inputs: tf.Tensor | tf.Tensor[]): tf.Tensor {
  return Array.isArray(inputs) ? inputs[0] : inputs;
}

function singleShape(inputShape: tfl.Shape | tfl.Shape[]): ShapeWithNulls {
  const first = inputShape[0];
  return (Array.isArray(first) ? first : inputShape) as ShapeWithNulls;
}

function product(values: readonly number[]): number {
  return values.reduce((a, b) => a * b, 1);
}

/** Views `x` as [before, length, after] around `axis`, so per-axis ops stay rank 3-4 whatever the input rank. */
function splitAroundAxis(shape: readonly number[], axis: number): [before: number, length: number, after: number] {
  return [product(shape.slice(0, axis)), shape[axis], product(shape.slice(axis + 1))];
}

/**
 * Max over the window {i, i+1} along `axis` (a size-2 max pool with stride 1, 'same' padding as in
 * TensorFlow: the window of the last element holds only itself).
 */
export function maxPairAlongAxis(x: tf.Tensor, axis: number): tf.Tensor {
  return tf.tidy(() => {
    const [before, length, after] = splitAroundAxis(x.shape, axis);
    const x3 = tf.reshape(x, [before, length, after]);
    const next = length > 1 ? tf.concat([tf.slice(x3, [0, 1, 0], [before, length - 1, after]), tf.slice(x3, [0, length - 1, 0], [before, 1, after])], 1) : x3;
    return tf.reshape(tf.maximum(x3, next), x.shape);
  });
}

/**
 * Binomial blur [1, 2, 1] / 4 with stride 2 along `axis`, zero padding as TensorFlow's 'same' for an
 * even length (nothing before, one after): out[j] = (m[2j] + 2 m[2j+1] + m[2j+2]) / 4.
 */
export function blurDownAlongAxis(x: tf.Tensor, axis: number): tf.Tensor {
  return tf.tidy(() => {
    const [before, length, after] = splitAroundAxis(x.shape, axis);
    if (length % 2 !== 0) throw new RangeError(`max-blur-pool needs an even size along axis ${axis}, got ${length}`);
    const half = length / 2;
    const padded = tf.pad(tf.reshape(x, [before, length, after]), [
      [0, 0],
      [0, 2],
      [0, 0],
    ]);
    const pairs = tf.reshape(padded, [before, half + 1, 2, after]);
    const even = tf.slice(pairs, [0, 0, 0, 0], [before, half, 1, after]);
    const odd = tf.slice(pairs, [0, 0, 1, 0], [before, half, 1, after]);
    const nextEven = tf.slice(pairs, [0, 1, 0, 0], [before, half, 1, after]);
    const blurred = tf.mul(tf.add(tf.add(even, nextEven), tf.mul(odd, 2)), 0.25);
    const outShape = x.shape.slice();
    outShape[axis] = half;
    return tf.reshape(blurred, outShape);
  });
}

/** Nearest-neighbour upsampling by 2 along `axis` (each element repeated twice). */
export function repeatTwiceAlongAxis(x: tf.Tensor, axis: number): tf.Tensor {
  return tf.tidy(() => {
    const [before, length, after] = splitAroundAxis(x.shape, axis);
    const x4 = tf.reshape(x, [before, length, 1, after]);
    const outShape = x.shape.slice();
    outShape[axis] = 2 * length;
    return tf.reshape(tf.concat([x4, x4], 2), outShape);
  });
}

export interface SpatialLayerArgs extends NonNullable<LayerArgs> {
  /** Number of spatial axes of the NHWC / NDHWC input. */
  dims: 2 | 3;
}

/**
 * N2V2's max-blur-pool (Zhang 2019 "Making convolutional networks shift-invariant again", used by
 * Hoeck et al. 2022): a 2x2(x2) max pool with stride 1, then a fixed binomial blur [1,2,1] (outer
 * product over the spatial axes, per channel) with stride 2. Both are separable, so they are applied
 * axis by axis, which is exact. Halves every spatial size (sizes must be even).
 */
export class MaxBlurPool extends tfl.layers.Layer {
  static className = 'BlindspotMaxBlurPool';
  readonly dims: 2 | 3;

  constructor(args: SpatialLayerArgs) {
    super(args);
    this.dims = args.dims;
  }

  override computeOutputShape(inputShape: tfl.Shape | tfl.Shape[]): tfl.Shape {
    const shape = singleShape(inputShape).slice();
    for (let axis = 1; axis <= this.dims; axis++) {
      const size = shape[axis];
      shape[axis] = size == null ? null : Math.floor(size / 2);
    }
    return shape;
  }

  override call(inputs: tf.Tensor | tf.Tensor[], _kwargs: Kwargs): tf.Tensor {
    return tf.tidy(() => {
      let x = singleTensor(inputs);
      for (let axis = 1; axis <= this.dims; axis++) x = maxPairAlongAxis(x, axis);
      for (let axis = 1; axis <= this.dims; axis++) x = blurDownAlongAxis(x, axis);
      return x;
    });
  }

  override getConfig(): tf.serialization.ConfigDict {
    return { ...super.getConfig(), dims: this.dims };
  }
}

/**
 * Nearest-neighbour upsampling by 2 on every spatial axis (NHWC or NDHWC). tfjs-layers has no 3D
 * version, and its 2D one goes through ResizeNearestNeighborGrad, whose cpu kernel (tfjs 4.22) mixes
 * gradients across batch elements (it offsets dy by the input's batch stride); reshape + concat is
 * correct everywhere.
 */
export class NearestUpSampling extends tfl.layers.Layer {
  static className = 'BlindspotNearestUpSampling';
  readonly dims: 2 | 3;

  constructor(args: SpatialLayerArgs) {
    super(args);
    this.dims = args.dims;
  }

  override computeOutputShape(inputShape: tfl.Shape | tfl.Shape[]): tfl.Shape {
    const shape = singleShape(inputShape).slice();
    for (let axis = 1; axis <= this.dims; axis++) {
      const size = shape[axis];
      shape[axis] = size == null ? null : 2 * size;
    }
    return shape;
  }

  override call(inputs: tf.Tensor | tf.Tensor[], _kwargs: Kwargs): tf.Tensor {
    return tf.tidy(() => {
      let x = singleTensor(inputs);
      for (let axis = 1; axis <= this.dims; axis++) x = repeatTwiceAlongAxis(x, axis);
      return x;
    });
  }

  override getConfig(): tf.serialization.ConfigDict {
    return { ...super.getConfig(), dims: this.dims };
  }
}

export interface ChannelBatchNormArgs extends NonNullable<LayerArgs> {
  momentum?: number;
  epsilon?: number;
}

/**
 * Batch normalisation over the last (channel) axis for input of any rank. tfjs-layers' own
 * BatchNormalization stops at rank 4; this one has the same weights (gamma, beta, moving_mean,
 * moving_variance), defaults (momentum 0.99, epsilon 1e-3) and training semantics (batch moments
 * while training, moving averages at inference).
 */
export class ChannelBatchNorm extends tfl.layers.Layer {
  static className = 'BlindspotChannelBatchNorm';
  readonly momentum: number;
  readonly epsilon: number;
  private gamma!: tfl.LayerVariable;
  private beta!: tfl.LayerVariable;
  private movingMean!: tfl.LayerVariable;
  private movingVariance!: tfl.LayerVariable;

  constructor(args?: ChannelBatchNormArgs) {
    super(args ?? {});
    this.momentum = args?.momentum ?? 0.99;
    this.epsilon = args?.epsilon ?? 1e-3;
  }

  override build(inputShape: tfl.Shape | tfl.Shape[]): void {
    const shape = singleShape(inputShape);
    const channels = shape[shape.length - 1];
    if (channels == null) throw new RangeError('ChannelBatchNorm needs a known channel count');
    this.gamma = this.addWeight('gamma', [channels], 'float32', tfl.initializers.ones(), undefined, true);
    this.beta = this.addWeight('beta', [channels], 'float32', tfl.initializers.zeros(), undefined, true);
    this.movingMean = this.addWeight('moving_mean', [channels], 'float32', tfl.initializers.zeros(), undefined, false);
    this.movingVariance = this.addWeight('moving_variance', [channels], 'float32', tfl.initializers.ones(), undefined, false);
    this.built = true;
  }

  override computeOutputShape(inputShape: tfl.Shape | tfl.Shape[]): tfl.Shape {
    return singleShape(inputShape);
  }

  override call(inputs: tf.Tensor | tf.Tensor[], kwargs: Kwargs): tf.Tensor {
    return tf.tidy(() => {
      const x = singleTensor(inputs);
      const reductionAxes = [...Array(x.rank - 1).keys()];
      let mean: tf.Tensor;
      let variance: tf.Tensor;
      if (kwargs['training'] === true) {
        ({ mean, variance } = tf.moments(x, reductionAxes));
        const decay = 1 - this.momentum;
        const batchMean = mean;
        const batchVariance = variance;
        tf.tidy(() => {
          const oldMean = this.movingMean.read();
          const oldVariance = this.movingVariance.read();
          this.movingMean.write(tf.sub(oldMean, tf.mul(tf.sub(oldMean, batchMean), decay)));
          this.movingVariance.write(tf.sub(oldVariance, tf.mul(tf.sub(oldVariance, batchVariance), decay)));
        });
      } else {
        mean = this.movingMean.read();
        variance = this.movingVariance.read();
      }
      const scale = tf.mul(this.gamma.read(), tf.rsqrt(tf.add(variance, this.epsilon)));
      return tf.add(tf.mul(tf.sub(x, mean), scale), this.beta.read());
    });
  }

  override getConfig(): tf.serialization.ConfigDict {
    return { ...super.getConfig(), momentum: this.momentum, epsilon: this.epsilon };
  }
}

tf.serialization.registerClass(MaxBlurPool);
tf.serialization.registerClass(NearestUpSampling);
tf.serialization.registerClass(ChannelBatchNorm);
