import * as tf from '@tensorflow/tfjs-core';

/**
 * The 8 in-plane dihedral transforms of batched images, acting on the Y and X axes only: NHWC
 * (axes 1, 2) or NDHWC (axes 2, 3), so in 3D the Z axis is untouched (voxels are usually
 * anisotropic along Z). Each is written as optional flips of Y and X followed by an optional
 * transposition of Y and X; the 8 combinations are the 4 rotations by 90 degrees with and without
 * a mirror. The inverse transposes first and then flips (flips and transposition are involutions).
 */
export interface DihedralTransform {
  readonly flipY: boolean;
  readonly flipX: boolean;
  /** Swap Y and X (after the flips). */
  readonly transpose: boolean;
  readonly forward: (x: tf.Tensor) => tf.Tensor;
  readonly inverse: (x: tf.Tensor) => tf.Tensor;
}

function yxAxes(x: tf.Tensor): [number, number] {
  if (x.rank === 4) return [1, 2];
  if (x.rank === 5) return [2, 3];
  throw new Error(`dihedral transforms need NHWC or NDHWC tensors, got rank ${x.rank}`);
}

/** Reverses one axis. A gather with reversed indices: the cpu backend's Reverse is ~10x slower. */
function flip(x: tf.Tensor, axis: number): tf.Tensor {
  return tf.tidy(() => {
    const n = x.shape[axis];
    const reversed = tf.tensor1d(Int32Array.from({ length: n }, (_, i) => n - 1 - i), 'int32');
    return tf.gather(x, reversed, axis);
  });
}

function flips(x: tf.Tensor, flipY: boolean, flipX: boolean): tf.Tensor {
  const [yAxis, xAxis] = yxAxes(x);
  return tf.tidy(() => {
    let y = x;
    if (flipY) y = flip(y, yAxis);
    if (flipX) y = flip(y, xAxis);
    return y === x ? x.clone() : y;
  });
}

function transposeYX(x: tf.Tensor): tf.Tensor {
  const [yAxis, xAxis] = yxAxes(x);
  const perm = x.shape.map((_, i) => i);
  perm[yAxis] = xAxis;
  perm[xAxis] = yAxis;
  return tf.transpose(x, perm);
}

/** The 8 transforms; the first is the identity. Each result is a new tensor (the caller disposes it). */
export function dihedralTransforms(): DihedralTransform[] {
  const out: DihedralTransform[] = [];
  for (const transpose of [false, true]) {
    for (const flipY of [false, true]) {
      for (const flipX of [false, true]) {
        out.push({
          flipY,
          flipX,
          transpose,
          forward: (x) => tf.tidy(() => (transpose ? transposeYX(flips(x, flipY, flipX)) : flips(x, flipY, flipX))),
          inverse: (x) => tf.tidy(() => flips(transpose ? transposeYX(x) : x, flipY, flipX)),
        });
      }
    }
  }
  return out;
}

/**
 * Test-time augmentation: the mean over the 8 dihedral transforms of inverse(predict(forward(x))).
 * `predict` must keep the spatial shape (fully convolutional, shapes valid after a quarter turn).
 */
export function predictDihedralMean(predict: (x: tf.Tensor) => tf.Tensor, x: tf.Tensor): tf.Tensor {
  const transforms = dihedralTransforms();
  let sum: tf.Tensor | null = null;
  // One tidy per transform: the model's temporaries of one pass are freed before the next starts.
  for (const t of transforms) {
    const previous: tf.Tensor | null = sum;
    sum = tf.tidy(() => {
      const restored = t.inverse(predict(t.forward(x)));
      return previous === null ? restored : tf.add(previous, restored);
    });
    previous?.dispose();
  }
  const mean = tf.div(sum!, transforms.length);
  sum!.dispose();
  return mean;
}

/**
 * One dihedral transform on a typed-array batch of one-channel images [N, Y, X, 1] or
 * [N, Z, Y, X, 1] (C order): every YX plane flipped (optionally) and then transposed
 * (optionally), as DihedralTransform.forward does on tensors. Returns the data and its shape.
 */
export function dihedralForwardArray(
  data: Float32Array,
  shape: readonly number[],
  t: Pick<DihedralTransform, 'flipY' | 'flipX' | 'transpose'>,
): { data: Float32Array; shape: number[] } {
  const { planes, ny, nx, yAxis } = planeLayout(shape);
  const out = new Float32Array(data.length);
  const plane = ny * nx;
  for (let p = 0; p < planes; p++) {
    const base = p * plane;
    if (!t.transpose) {
      for (let y = 0; y < ny; y++) {
        const src = base + (t.flipY ? ny - 1 - y : y) * nx;
        const dst = base + y * nx;
        if (t.flipX) for (let x = 0; x < nx; x++) out[dst + x] = data[src + nx - 1 - x];
        else out.set(data.subarray(src, src + nx), dst);
      }
    } else {
      // out[a, b] (shape [nx, ny]) = flipped[b, a]
      for (let a = 0; a < nx; a++) {
        const sx = t.flipX ? nx - 1 - a : a;
        const dst = base + a * ny;
        for (let b = 0; b < ny; b++) out[dst + b] = data[base + (t.flipY ? ny - 1 - b : b) * nx + sx];
      }
    }
  }
  const outShape = [...shape];
  if (t.transpose) [outShape[yAxis], outShape[yAxis + 1]] = [shape[yAxis + 1], shape[yAxis]];
  return { data: out, shape: outShape };
}

/**
 * Adds the inverse of transform `t` of `predicted` (in the transformed shape) to `sum` (in the
 * original shape `shape`): out[y, x] = transpose ? predicted[fx(x), fy(y)] : predicted[fy(y), fx(x)].
 */
function addDihedralInverse(sum: Float32Array, predicted: Float32Array, shape: readonly number[], t: Pick<DihedralTransform, 'flipY' | 'flipX' | 'transpose'>): void {
  const { planes, ny, nx } = planeLayout(shape);
  const plane = ny * nx;
  for (let p = 0; p < planes; p++) {
    const base = p * plane;
    for (let y = 0; y < ny; y++) {
      const fy = t.flipY ? ny - 1 - y : y;
      const row = base + y * nx;
      for (let x = 0; x < nx; x++) {
        const fx = t.flipX ? nx - 1 - x : x;
        sum[row + x] += predicted[t.transpose ? base + fx * ny + fy : base + fy * nx + fx];
      }
    }
  }
}

function planeLayout(shape: readonly number[]): { planes: number; ny: number; nx: number; yAxis: number } {
  if ((shape.length !== 4 && shape.length !== 5) || shape[shape.length - 1] !== 1) {
    throw new Error(`dihedral transforms need [N, Y, X, 1] or [N, Z, Y, X, 1] one-channel batches, got [${shape.join(', ')}]`);
  }
  const yAxis = shape.length - 3;
  const planes = shape.slice(0, yAxis).reduce((a, b) => a * b, 1);
  return { planes, ny: shape[yAxis], nx: shape[yAxis + 1], yAxis };
}

/**
 * predictDihedralMean on typed arrays, for any engine: the mean over the 8 dihedral transforms of
 * inverse(predict(forward(x))), summed in float32 in the same order as the tensor version. One
 * transform's prediction is alive at a time besides the sum.
 */
export async function predictDihedralMeanArray(
  predict: (batch: Float32Array, shape: readonly number[]) => Promise<Float32Array>,
  data: Float32Array,
  shape: readonly number[],
): Promise<Float32Array> {
  const sum = new Float32Array(data.length);
  const transforms = dihedralTransforms();
  for (const t of transforms) {
    const input = t.flipY || t.flipX || t.transpose ? dihedralForwardArray(data, shape, t) : { data, shape: [...shape] };
    const predicted = await predict(input.data, input.shape);
    addDihedralInverse(sum, predicted, shape, t);
  }
  for (let i = 0; i < sum.length; i++) sum[i] /= transforms.length;
  return sum;
}
