/**
 * Custom tfjs-layers layers the U-Net needs: N2V2's max-blur-pool (2D and 3D), nearest upsampling
 * (2D and 3D), and batch normalisation for rank-5 (NDHWC) tensors.
 *
 * Every layer is built from plain ops of rank <= 4 (reshape, pad, slice, concat, maximum, add, mul,
 * mean) so it has gradients on every backend and needs no kernel that wasm lacks (tfjs has no 3D
 * depthwise convolution, and Tile's gradient stops at rank 4); batch normalisation in training runs
 * as two fused kernels with their own gradient on cpu and wasm (backend/kernels/batchNorm.ts) and
 * from those plain ops elsewhere. Importing this module registers the layers with tf.serialization,
 * so a saved model.json that uses them loads with tf.loadLayersModel.
 */
import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';
import { batchNormKernelsAvailable, batchNormTrainGradKernel, batchNormTrainKernel, registerBatchNormKernels } from '../backend/kernels/batchNorm.js';

// The fused batch-norm kernels on cpu and wasm (other backends compose the op from tfjs ops).
registerBatchNormKernels();

type LayerArgs = ConstructorParameters<typeof tfl.layers.Layer>[0];
export type Kwargs = Record<string, unknown>;
export type ShapeWithNulls = (number | null)[];

export function singleTensor(inputs: tf.Tensor | tf.Tensor[]): tf.Tensor {
  return Array.isArray(inputs) ? inputs[0] : inputs;
}

export function singleShape(inputShape: tfl.Shape | tfl.Shape[]): ShapeWithNulls {
  const first = inputShape[0];
  return (Array.isArray(first) ? first : inputShape) as ShapeWithNulls;
}

export function product(values: readonly number[]): number {
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
 * Where N2V2's max-blur-pool puts its blur: 'trailing' as n2v's Keras layer (TensorFlow's 'same'
 * padding for an even length: nothing before, two after; pooled feature j covers input pixels
 * 2j..2j+3), 'centred' as kornia's max_blur_pool2d that careamics uses (one on each side; feature j
 * covers 2j-1..2j+2 around 2j + 0.5, the centre of the two pixels nearest upsampling gives it back to).
 */
export type BlurPoolAlignment = 'trailing' | 'centred';

/**
 * Binomial blur [1, 2, 1] / 4 with stride 2 along `axis`, zero padded: trailing
 * out[j] = (m[2j] + 2 m[2j+1] + m[2j+2]) / 4, centred out[j] = (m[2j-1] + 2 m[2j] + m[2j+1]) / 4.
 */
export function blurDownAlongAxis(x: tf.Tensor, axis: number, alignment: BlurPoolAlignment): tf.Tensor {
  return tf.tidy(() => {
    const [before, length, after] = splitAroundAxis(x.shape, axis);
    if (length % 2 !== 0) throw new RangeError(`max-blur-pool needs an even size along axis ${axis}, got ${length}`);
    const half = length / 2;
    const padded = tf.pad(tf.reshape(x, [before, length, after]), [
      [0, 0],
      alignment === 'centred' ? [1, 1] : [0, 2],
      [0, 0],
    ]);
    // pairs[k] = (padded[2k], padded[2k+1]): out[j] = (pairs[j][0] + 2 pairs[j][1] + pairs[j+1][0]) / 4.
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

/** A layer that scales every spatial axis of NHWC / NDHWC input by a fixed factor (pooling 1/2, upsampling 2). */
abstract class SpatialScaleLayer extends tfl.layers.Layer {
  readonly dims: 2 | 3;
  protected abstract readonly scale: number;

  constructor(args: SpatialLayerArgs) {
    super(args);
    this.dims = args.dims;
  }

  override computeOutputShape(inputShape: tfl.Shape | tfl.Shape[]): tfl.Shape {
    const shape = singleShape(inputShape).slice();
    for (let axis = 1; axis <= this.dims; axis++) {
      const size = shape[axis];
      shape[axis] = size == null ? null : Math.floor(size * this.scale);
    }
    return shape;
  }

  override getConfig(): tf.serialization.ConfigDict {
    return { ...super.getConfig(), dims: this.dims };
  }
}

/**
 * N2V2's max-blur-pool (Zhang 2019 "Making convolutional networks shift-invariant again", used by
 * Hoeck et al. 2022): a 2x2(x2) max pool with stride 1, then a fixed binomial blur [1,2,1] (outer
 * product over the spatial axes, per channel) with stride 2. Both are separable, so they are applied
 * axis by axis, which is exact. Halves every spatial size (sizes must be even).
 */
abstract class MaxBlurPoolLayer extends SpatialScaleLayer {
  protected readonly scale = 0.5;
  protected abstract readonly alignment: BlurPoolAlignment;

  override call(inputs: tf.Tensor | tf.Tensor[], _kwargs: Kwargs): tf.Tensor {
    return tf.tidy(() => {
      let x = singleTensor(inputs);
      for (let axis = 1; axis <= this.dims; axis++) x = maxPairAlongAxis(x, axis);
      for (let axis = 1; axis <= this.dims; axis++) x = blurDownAlongAxis(x, axis, this.alignment);
      return x;
    });
  }
}

/** The 'trailing' max-blur-pool: what n2v2 models saved before `blurPool` existed use. */
export class MaxBlurPool extends MaxBlurPoolLayer {
  static className = 'BlindspotMaxBlurPool';
  protected readonly alignment = 'trailing';
}

/** The 'centred' max-blur-pool (UNetConfig.blurPool 'centred'), what new n2v2 models use. */
export class CentredMaxBlurPool extends MaxBlurPoolLayer {
  static className = 'BlindspotCentredMaxBlurPool';
  protected readonly alignment = 'centred';
}

/**
 * Nearest-neighbour upsampling by 2 on every spatial axis (NHWC or NDHWC). tfjs-layers has no 3D
 * version, and its 2D one goes through ResizeNearestNeighborGrad, whose cpu kernel (tfjs 4.22) mixes
 * gradients across batch elements (it offsets dy by the input's batch stride); reshape + concat is
 * correct everywhere.
 */
export class NearestUpSampling extends SpatialScaleLayer {
  static className = 'BlindspotNearestUpSampling';
  protected readonly scale = 2;

  override call(inputs: tf.Tensor | tf.Tensor[], _kwargs: Kwargs): tf.Tensor {
    return tf.tidy(() => {
      let x = singleTensor(inputs);
      for (let axis = 1; axis <= this.dims; axis++) x = repeatTwiceAlongAxis(x, axis);
      return x;
    });
  }
}

/**
 * Per-channel sums of x viewed as [N, C], as one [1, N] x [N, C] matmul. A reduction over the
 * leading axes is a transpose plus a reduce on wasm (and the tfjs batch-norm gradient tiles its
 * statistics to the full tensor); the matmul runs in XNNPACK's fast path and is as good on GPUs.
 */
function channelSums(x2d: tf.Tensor2D): tf.Tensor1D {
  const [n, c] = x2d.shape;
  return tf.reshape(tf.matMul(tf.ones([1, n]), x2d), [c]);
}

/**
 * Batch normalisation in training mode as one differentiable op with the analytic gradient
 * dx = gamma * rstd * (dy - mean(dy) - xhat * mean(dy * xhat)), dgamma = sum(dy * xhat),
 * dbeta = sum(dy): a handful of broadcasts and two channel sums instead of tfjs's generic chain.
 * Returns the batch statistics (kept; the caller disposes them) for the moving averages.
 */
export function batchNormTraining(
  x: tf.Tensor,
  gamma: tf.Tensor,
  beta: tf.Tensor,
  epsilon: number,
): { y: tf.Tensor; mean: tf.Tensor1D; variance: tf.Tensor1D } {
  if (batchNormKernelsAvailable()) return batchNormTrainingFused(x, gamma, beta, epsilon);
  const channels = x.shape[x.shape.length - 1];
  const n = x.size / channels;
  let stats: { mean: tf.Tensor1D; variance: tf.Tensor1D } | null = null;
  const forward = (input: tf.Tensor, g: tf.Tensor, b: tf.Tensor, save: tf.GradSaveFunc) => {
    const x2 = tf.reshape(input, [n, channels]) as tf.Tensor2D;
    const mean = tf.div(channelSums(x2), n) as tf.Tensor1D;
    const centred = tf.sub(x2, mean);
    const variance = tf.div(channelSums(tf.square(centred) as tf.Tensor2D), n) as tf.Tensor1D;
    const rstd = tf.rsqrt(tf.add(variance, epsilon));
    const xhat = tf.mul(centred, rstd) as tf.Tensor2D;
    stats = { mean: tf.keep(mean), variance: tf.keep(variance) };
    save([xhat, rstd, g]);
    return {
      value: tf.reshape(tf.add(tf.mul(xhat, g), b), input.shape),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [savedXhat, savedRstd, savedGamma] = saved as [tf.Tensor2D, tf.Tensor1D, tf.Tensor1D];
        const dy2 = tf.reshape(dy, [n, channels]) as tf.Tensor2D;
        const dbeta = channelSums(dy2);
        const dgamma = channelSums(tf.mul(dy2, savedXhat) as tf.Tensor2D);
        const centredDy = tf.sub(tf.sub(dy2, tf.div(dbeta, n)), tf.mul(savedXhat, tf.div(dgamma, n)));
        const dx = tf.mul(centredDy, tf.mul(savedGamma, savedRstd));
        return [tf.reshape(dx, input.shape), dgamma, dbeta];
      },
    };
  };
  const op = tf.customGrad(forward as unknown as Parameters<typeof tf.customGrad>[0]) as (a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) => tf.Tensor;
  const y = op(x, gamma, beta);
  const kept = stats as { mean: tf.Tensor1D; variance: tf.Tensor1D } | null;
  if (kept === null) throw new Error('batchNormTraining: statistics were not computed');
  return { y, ...kept };
}

/**
 * batchNormTraining on backends with the fused kernels (cpu, wasm: backend/kernels/batchNorm.ts):
 * two passes over the activations forward and two backward instead of ~9 element-wise ops and 4
 * channel sums. Saves x itself (not xhat) and the statistics; the backward recomputes xhat.
 */
function batchNormTrainingFused(x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor, epsilon: number): { y: tf.Tensor; mean: tf.Tensor1D; variance: tf.Tensor1D } {
  let stats: { mean: tf.Tensor1D; variance: tf.Tensor1D } | null = null;
  const forward = (input: tf.Tensor, g: tf.Tensor, b: tf.Tensor, save: tf.GradSaveFunc) => {
    const [y, mean, variance] = batchNormTrainKernel(input, g, b, epsilon);
    stats = { mean: tf.keep(mean), variance: tf.keep(variance) };
    save([input, mean, variance, g]);
    return {
      value: y,
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [savedX, savedMean, savedVariance, savedGamma] = saved;
        return batchNormTrainGradKernel(dy, savedX, savedMean, savedVariance, savedGamma, epsilon);
      },
    };
  };
  const op = tf.customGrad(forward as unknown as Parameters<typeof tf.customGrad>[0]) as (a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) => tf.Tensor;
  const y = op(x, gamma, beta);
  const kept = stats as { mean: tf.Tensor1D; variance: tf.Tensor1D } | null;
  if (kept === null) throw new Error('batchNormTraining: statistics were not computed');
  return { y, ...kept };
}

export interface ChannelBatchNormArgs extends NonNullable<LayerArgs> {
  momentum?: number;
  epsilon?: number;
}

/**
 * Batch normalisation over the last (channel) axis for input of any rank. tfjs-layers' own
 * BatchNormalization stops at rank 4; this one has the same weights (gamma, beta, moving_mean,
 * moving_variance), epsilon (1e-3) and training semantics (batch moments
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
    // 0.9, not Keras' 0.99: inference uses the moving statistics, and at 0.99 they are still 29%
    // initial values after 125 steps, which cost a short CPU run several dB (measured on the demo).
    this.momentum = args?.momentum ?? 0.9;
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
    const x = singleTensor(inputs);
    if (kwargs['training'] !== true) {
      return tf.tidy(() => {
        const scale = tf.mul(this.gamma.read(), tf.rsqrt(tf.add(this.movingVariance.read(), this.epsilon)));
        return tf.add(tf.mul(tf.sub(x, this.movingMean.read()), scale), this.beta.read());
      });
    }
    const { y, mean, variance } = batchNormTraining(x, this.gamma.read(), this.beta.read(), this.epsilon);
    tf.tidy(() => {
      const decay = 1 - this.momentum;
      const oldMean = this.movingMean.read();
      const oldVariance = this.movingVariance.read();
      this.movingMean.write(tf.sub(oldMean, tf.mul(tf.sub(oldMean, mean), decay)));
      this.movingVariance.write(tf.sub(oldVariance, tf.mul(tf.sub(oldVariance, variance), decay)));
    });
    tf.dispose([mean, variance]);
    return y;
  }

  override getConfig(): tf.serialization.ConfigDict {
    return { ...super.getConfig(), momentum: this.momentum, epsilon: this.epsilon };
  }
}

tf.serialization.registerClass(MaxBlurPool);
tf.serialization.registerClass(CentredMaxBlurPool);
tf.serialization.registerClass(NearestUpSampling);
tf.serialization.registerClass(ChannelBatchNorm);
