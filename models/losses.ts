/** Blind-spot training losses. */
import * as tf from '@tensorflow/tfjs-core';

/**
 * Mean over masked pixels (mask 1) of the squared (mse) or absolute (mae) error; pred, target and
 * mask have the same shape. Zero when nothing is masked (the denominator is clamped to 1).
 */
export function maskedLoss(pred: tf.Tensor, target: tf.Tensor, mask: tf.Tensor, kind: 'mse' | 'mae'): tf.Scalar {
  return tf.tidy(() => {
    const diff = tf.sub(pred, target);
    const error = kind === 'mse' ? tf.square(diff) : tf.abs(diff);
    const maskedSum = tf.sum(tf.mul(error, mask));
    return tf.div(maskedSum, tf.maximum(tf.sum(mask), 1)) as tf.Scalar;
  });
}
