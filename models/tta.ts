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
