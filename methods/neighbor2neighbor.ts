/**
 * Neighbor2Neighbor (Huang et al. 2021): two sub-images of one noisy patch, taken from neighbouring
 * pixels of every 2x2 cell, are noisy views of nearly the same signal with independent noise; the
 * network learns to map one to the other, so every pixel of the sub-image is in the loss (a
 * blind-spot method scores 1-2% of them per step). A regulariser ties it to the full-resolution
 * network it becomes at inference:
 *
 *   L = |f(g1(y)) - g2(y)|^2 + gamma |f(g1(y)) - g2(y) - (g1(f(y)) - g2(f(y)))|^2,  f(y) without gradient.
 *
 * gamma is 1: the paper raises it from 0 to 2 over the epochs, a schedule a run on a time budget has
 * no end for; 1 is that ramp's mean. In 3D the cells are 2x2 in YX in every slice (Z is often
 * coarser than YX in microscopy, and a 2x2x2 cell would halve it too). Validation is J-invariant:
 * the pair loss is no measure of the full-resolution output's quality.
 */
import * as tf from '@tensorflow/tfjs-core';
import { UsageError } from '../core/errors.js';
import type { Method, MethodPatch, MethodTraining, PlainLossRewrite, PreparedPatch, TrainingContext } from './method.js';
import { jInvariantValidation, priorOrPlainDenoiser, removeOffsetOnNoisy, unetNetwork } from './shared.js';

/** Mask codes of the sub-sampler: which pixel of each cell is g1's and which g2's. */
const FIRST = 1;
const SECOND = 2;
const REGULARISER_WEIGHT = 1;

/**
 * The 8 ordered pairs of edge-adjacent positions in a 2x2 cell, as (row, column) offsets: the
 * paper's neighbour sub-sampler draws one per cell.
 */
const NEIGHBOUR_PAIRS: ReadonlyArray<readonly [number, number, number, number]> = [
  [0, 0, 0, 1],
  [0, 0, 1, 0],
  [0, 1, 1, 1],
  [1, 0, 1, 1],
  [0, 1, 0, 0],
  [1, 0, 0, 0],
  [1, 1, 0, 1],
  [1, 1, 1, 0],
];

/** The patch itself as input and target; the mask carries each cell's pair (FIRST / SECOND). */
function neighbourPairPatch(p: MethodPatch): PreparedPatch {
  const [height, width] = p.shape.slice(-2);
  if (height % 2 !== 0 || width % 2 !== 0) {
    throw new UsageError(`neighbor2neighbor needs even patch sides in Y and X (2x2 cells), got ${p.shape.join('x')}`);
  }
  const slices = p.shape.length === 3 ? p.shape[0] : 1;
  const mask = new Float32Array(p.data.length);
  for (let z = 0; z < slices; z++) {
    const base = z * height * width;
    for (let y = 0; y < height; y += 2) {
      for (let x = 0; x < width; x += 2) {
        const [y1, x1, y2, x2] = NEIGHBOUR_PAIRS[p.rng.int(NEIGHBOUR_PAIRS.length)];
        mask[base + (y + y1) * width + x + x1] = FIRST;
        mask[base + (y + y2) * width + x + x2] = SECOND;
      }
    }
  }
  return { input: p.data, target: p.data, mask };
}

/**
 * The sub-image of `x` (NHWC or NDHWC, one channel) at the mask's `code` pixels: each 2x2 cell in YX
 * has exactly one, so the sum over the cell is that pixel. Reshape and sum run on every backend.
 */
function subImage(x: tf.Tensor, mask: tf.Tensor, code: number): tf.Tensor {
  const picked = tf.mul(x, tf.cast(tf.equal(mask, code), 'float32'));
  const shape = picked.shape;
  const [height, width] = shape.slice(-3, -1);
  const lead = shape.slice(0, -3);
  const cells = tf.reshape(picked, [...lead, height / 2, 2, width / 2, 2]);
  const axes = [lead.length + 1, lead.length + 3];
  return tf.expandDims(tf.sum(cells, axes), -1);
}

/** subImage on arrays, for the engines that take the loss as a masked loss on a rewritten batch. */
function subImageValues(values: Float32Array, mask: Float32Array, shape: readonly number[], code: number): Float32Array {
  const [height, width] = shape.slice(-3, -1);
  const halfWidth = width / 2;
  const planes = values.length / (height * width);
  const out = new Float32Array(values.length / 4);
  for (let p = 0; p < planes; p++) {
    const base = p * height * width;
    const outBase = (p * height * width) / 4;
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        const i = base + y * width + x;
        if (mask[i] === code) out[outBase + (y >> 1) * halfWidth + (x >> 1)] = values[i];
      }
    }
  }
  return out;
}

/**
 * With MSE, the loss above is a masked MSE on the sub-images: with d = f(g1) - g2 and D = g1(f(y)) - g2(f(y)),
 * mean(d^2) + w mean((d - D)^2) = (1 + w) mean((f(g1) - (g2 + w D / (1 + w)))^2) + w / (1 + w) mean(D^2),
 * the last term constant (no gradient through f(y)). So g1 is the input, g2 + w D / (1 + w) the target.
 */
const neighbourPairAsMaskedLoss: PlainLossRewrite = {
  loss: 'mse',
  forwardInputs: (batch) => [batch.inputs],
  rewrite(batch, [prediction]) {
    const { shape, inputs, masks } = batch;
    const g1 = subImageValues(inputs, masks, shape, FIRST);
    const g2 = subImageValues(inputs, masks, shape, SECOND);
    const f1 = subImageValues(prediction, masks, shape, FIRST);
    const f2 = subImageValues(prediction, masks, shape, SECOND);
    const pull = REGULARISER_WEIGHT / (1 + REGULARISER_WEIGHT);
    const targets = new Float32Array(g2.length);
    let gapSquares = 0;
    for (let i = 0; i < targets.length; i++) {
      const gap = f1[i] - f2[i];
      targets[i] = g2[i] + pull * gap;
      gapSquares += gap * gap;
    }
    const [height, width] = shape.slice(-3, -1);
    const subBatch = { shape: [...shape.slice(0, -3), height / 2, width / 2, 1], inputs: g1, targets, masks: new Float32Array(g1.length).fill(1) };
    return { terms: [{ batch: subBatch, scale: 1 + REGULARISER_WEIGHT, repeatsForward: false }], offset: (pull * gapSquares) / g1.length };
  },
};

function neighbourTraining(context: TrainingContext): MethodTraining {
  return {
    batchLoss: (apply, inputs, _targets, masks) => {
      // The full-resolution output, sub-sampled the same way, enters without gradient (as in the paper).
      // tfjs has no stopGradient: inside a customGrad forward no op is taped, so no backward pass runs there.
      // It runs first, as the rewrite's forward pass does on another engine (batch norm's moving statistics).
      const full = tf.customGrad((...args) => {
        const x = args[0] as tf.Tensor;
        return { value: apply(x), gradFunc: () => tf.zerosLike(x) };
      })(inputs);
      const g1 = subImage(inputs, masks, FIRST);
      const g2 = subImage(inputs, masks, SECOND);
      const predicted = apply(g1);
      const ones = tf.onesLike(g2);
      const main = context.maskedLoss(predicted, g2, ones);
      const gap = tf.sub(tf.sub(predicted, g2), tf.sub(subImage(full, masks, FIRST), subImage(full, masks, SECOND)));
      return tf.add(main, tf.mul(REGULARISER_WEIGHT, tf.mean(tf.square(gap)))) as tf.Scalar;
    },
    plainMaskedLoss: neighbourPairAsMaskedLoss,
  };
}

export const neighbor2neighbor: Method = {
  name: 'neighbor2neighbor',
  summary: 'Neighbor2Neighbor: maps one neighbour sub-image of a patch to the other (every pixel in the loss), regularised toward the full-resolution network',
  paper: {
    authors: 'Huang, Li, Jia, Lu, Liu',
    title: 'Neighbor2Neighbor: Self-Supervised Denoising from Single Noisy Images',
    venue: 'CVPR',
    year: 2021,
    url: 'https://arxiv.org/abs/2101.02824',
  },
  dims: [2, 3],
  networkKind: 'unet',
  accepts: ['loss'],
  masking: 'none',
  network: (r) => unetNetwork('neighbor2neighbor', r, 'n2v'),
  preparePatch: neighbourPairPatch,
  training: neighbourTraining,
  // Its pair loss plus regulariser rose while its PSNR rose (BSD68, 20 min: best loss at step 500 of 5233).
  validation: jInvariantValidation,
  afterTraining: removeOffsetOnNoisy,
  denoiser: priorOrPlainDenoiser,
};
