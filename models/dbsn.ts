/**
 * D-BSN (Wu et al. 2020, "Unpaired learning of deep image denoising", seed 000): a blind-spot
 * network by architecture, 2D (NHWC) and 3D (NDHWC).
 *
 * A 1x1 head, then two branches, each: a centrally masked k x k convolution (centre tap held at
 * zero), two 1x1 convolutions, `blocks` residual blocks x + 1x1(relu(dilated 3x3 conv, dilation
 * d)), a 1x1 convolution; the branches are concatenated and merged by 1x1 convolutions. Branch 1:
 * k = 3, d = 2; branch 2: k = 5, d = 3 (d = (k + 1) / 2, as in the paper's code).
 *
 * Why the centre stays blind: the masked conv reaches offsets m with 0 < max|m_i| <= (k - 1) / 2,
 * the dilated convs and residuals add multiples of d on each axis, and 1x1 convs add nothing. An
 * offset m + d*n is zero only if m = 0 mod d on every axis, which for |m_i| < d means m = 0: the
 * masked tap. (So each branch is blind on the whole lattice d*Z^dims, not only at the centre; the
 * two branches together see every pixel except those on (lcm of the dilations)*Z^dims.)
 *
 * Output: 1 channel, or 2 (mean and log variance of the prediction, models/bayes.ts convention)
 * for the paper's self-supervised loss with a per-pixel noise variance (dbsnLoss below).
 */
import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';
import { Rng } from '../core/rng.js';
import { splitPrior } from './bayes.js';
import { CentreMaskedConv, DilatedConv } from './blindspotLayers.js';
import type { UNetGeometry } from './unet.js';

export interface DbsnConfig {
  dims: 2 | 3;
  /** Channels of every layer (the paper's mid_ch). */
  filters: number;
  /** Residual dilated blocks per branch. */
  blocks: number;
  /** 1 (the denoised value) or 2 (mean and log variance, models/bayes.ts); default 1. */
  outputChannels?: number;
}

/**
 * 64 channels and 9 blocks per branch in 2D (our reading of the paper's configuration; the
 * published model is wider, 96 channels); in 3D a lighter 32 channels, 4 blocks.
 */
export const defaultDbsnConfig = (dims: 2 | 3): DbsnConfig => (dims === 2 ? { dims, filters: 64, blocks: 9 } : { dims, filters: 32, blocks: 4 });

/** The two branches: centrally masked kernel side and the dilation of the blocks that follow it. */
export const dbsnBranches: readonly { maskedKernel: number; dilation: number }[] = [
  { maskedKernel: 3, dilation: 2 },
  { maskedKernel: 5, dilation: 3 },
];

function validateConfig(cfg: DbsnConfig): void {
  if (cfg.dims !== 2 && cfg.dims !== 3) throw new RangeError(`dbsn dims must be 2 or 3, got ${String(cfg.dims)}`);
  if (!Number.isInteger(cfg.filters) || cfg.filters < 1) throw new RangeError(`dbsn filters must be a positive integer, got ${cfg.filters}`);
  if (!Number.isInteger(cfg.blocks) || cfg.blocks < 0) throw new RangeError(`dbsn blocks must be an integer >= 0, got ${cfg.blocks}`);
  if (cfg.outputChannels !== undefined && cfg.outputChannels !== 1 && cfg.outputChannels !== 2) {
    throw new RangeError(`dbsn outputChannels must be 1 or 2, got ${cfg.outputChannels}`);
  }
}

/**
 * Builds the network: input [batch, (Z,) Y, X, 1] of any size, output the same size with
 * outputChannels channels. The same seed gives the same weights.
 *
 * Initialisation: He normal, except the last 1x1 convolution of each residual block, which starts
 * at zero (every block the identity at first; with He normal there the activations grew about 3x
 * per block: mean prediction 1.5 on unit-variance input at 5 blocks), and the output (Glorot, its
 * variance channel constant: startWithSmallPredictionVariance).
 */
export function buildDbsn(cfg: DbsnConfig, seed: number): tfl.LayersModel {
  validateConfig(cfg);
  const rng = new Rng(seed);
  const { dims, filters, blocks } = cfg;
  const input = tfl.input({ shape: dims === 2 ? [null, null, 1] : [null, null, null, 1], name: 'input' });
  const apply = (l: tfl.layers.Layer, x: tfl.SymbolicTensor | tfl.SymbolicTensor[]): tfl.SymbolicTensor => l.apply(x) as tfl.SymbolicTensor;
  const pointwise = (x: tfl.SymbolicTensor, channels: number, name: string, relu: boolean, init: 'he' | 'glorot' | 'zeros' = 'he'): tfl.SymbolicTensor => {
    // The seed is drawn for every layer, so a zero-initialised layer leaves the others' weights as they were.
    const initialiserSeed = rng.nextUint32();
    const args = {
      filters: channels,
      kernelSize: 1,
      padding: 'same' as const,
      activation: relu ? ('relu' as const) : ('linear' as const),
      kernelInitializer:
        init === 'zeros' ? tfl.initializers.zeros() : init === 'glorot' ? tfl.initializers.glorotUniform({ seed: initialiserSeed }) : tfl.initializers.heNormal({ seed: initialiserSeed }),
      biasInitializer: 'zeros' as const,
      name,
    };
    return apply(dims === 2 ? tfl.layers.conv2d(args) : tfl.layers.conv3d(args), x);
  };
  const relu = (x: tfl.SymbolicTensor, name: string): tfl.SymbolicTensor => apply(tfl.layers.activation({ activation: 'relu', name }), x);

  const head = pointwise(input, filters, 'head', true);
  const branchOutputs = dbsnBranches.map(({ maskedKernel, dilation }, b) => {
    const p = `br${b + 1}`;
    let x = relu(apply(new CentreMaskedConv({ dims, filters, kernelSize: maskedKernel, seed: rng.nextUint32(), name: `${p}_masked_conv` }), head), `${p}_masked_relu`);
    x = pointwise(x, filters, `${p}_pre_a`, true);
    x = pointwise(x, filters, `${p}_pre_b`, true);
    for (let i = 0; i < blocks; i++) {
      const dilated = relu(apply(new DilatedConv({ dims, filters, kernelSize: 3, dilation, seed: rng.nextUint32(), name: `${p}_block${i}_dilated` }), x), `${p}_block${i}_relu`);
      // Zero-initialised, so every block starts as the identity (see buildDbsn's doc).
      const residual = pointwise(dilated, filters, `${p}_block${i}_pointwise`, false, 'zeros');
      x = apply(tfl.layers.add({ name: `${p}_block${i}_add` }), [x, residual]);
    }
    return pointwise(x, filters, `${p}_post`, true);
  });
  const merged = apply(tfl.layers.concatenate({ axis: -1, name: 'merge_concat' }), branchOutputs);
  let y = pointwise(merged, filters, 'merge', false);
  y = pointwise(y, filters, 'tail_a', true);
  y = pointwise(y, filters, 'tail_b', true);
  const output = pointwise(y, cfg.outputChannels ?? 1, 'output', false, 'glorot');
  const model = tfl.model({ inputs: input, outputs: output, name: `dbsn_${dims}d_blocks${blocks}` });
  if ((cfg.outputChannels ?? 1) === 2) startWithSmallPredictionVariance(model.getLayer('output'));
  return model;
}

/**
 * log Sigma_mu at initialisation, normalised units: Sigma_mu = 0.01, well below the noise of typical
 * data (normalised sigma_n 0.1-0.5), so the loss starts as a scaled MSE on the mean.
 */
export const initialLogPredictionVariance = Math.log(0.01);

/**
 * The variance channel of the output starts constant at initialLogPredictionVariance (zero kernel
 * column): with Sigma_mu << Sigma_n, D-BSN's loss is (y - mu)^2 / (2 Sigma_n) + const, the MSE the
 * paper's code pre-trains mu with before the likelihood; the prediction variance then grows where
 * the residual exceeds the noise. A random start (log variance 2.3 +- 2.3 measured) divided mu's
 * gradient by Sigma_mu + Sigma_n ~ 10 and held the mean back for most of a short run.
 */
function startWithSmallPredictionVariance(output: tfl.layers.Layer): void {
  // Tensor ops, not a read-modify-write of the values: webgpu cannot read synchronously in Node.
  tf.tidy(() => {
    const [kernel, bias] = output.getWeights();
    const channels = kernel.shape[kernel.shape.length - 1];
    const isVariance = Array.from({ length: channels }, (_, c) => (c === 1 ? 1 : 0));
    const keep = tf.tensor1d(isVariance.map((v) => 1 - v));
    const kernelStart = tf.mul(kernel, keep);
    const biasStart = tf.add(tf.mul(bias, keep), tf.tensor1d(isVariance.map((v) => v * initialLogPredictionVariance)));
    output.setWeights([kernelStart, biasStart]);
  });
}

/**
 * No pooling, so any size works (sizeMultiple 1). The field reaches (k - 1) / 2 + blocks * d pixels
 * on each side, max over the branches.
 */
export function dbsnGeometry(cfg: DbsnConfig): UNetGeometry {
  validateConfig(cfg);
  const radius = Math.max(...dbsnBranches.map(({ maskedKernel, dilation }) => (maskedKernel - 1) / 2 + cfg.blocks * dilation));
  return { sizeMultiple: 1, receptiveRadius: radius, receptiveBefore: radius, receptiveAfter: radius };
}

/**
 * The self-supervised loss of D-BSN with a known per-pixel noise variance (seed 000), for a
 * 2-channel prediction (mean mu, log variance of the prediction error Sigma_mu):
 *   1/2 [ (y - mu)^2 / (Sigma_mu + Sigma_n) + log Sigma_n + Sigma_mu / Sigma_n ],
 * averaged over pixels where mask is 1 (an all-ones mask: every pixel, the network is blind by
 * construction). Sigma_n = noiseVariance(mu) (pass e.g. normalisedNoiseVariance(noise, norm) from
 * models/bayes.ts): the noise level function evaluated at the blind-spot mean, as the paper's code
 * does for signal-dependent noise and as models/bayes.ts posterior() does at inference, so the
 * denoised output is the combination training optimised. (Evaluated at the noisy y itself, a
 * signal-dependent variance would correlate with that pixel's noise and weight bright noise down.)
 * Denoise with posterior(), whose posterior mean is the paper's MAP combination.
 */
export function dbsnLoss(noiseVariance: (intensity: tf.Tensor) => tf.Tensor): (prediction: tf.Tensor, target: tf.Tensor, mask: tf.Tensor) => tf.Scalar {
  return (prediction, target, mask) =>
    tf.tidy(() => {
      const { mean, variance } = splitPrior(prediction);
      const noiseVar = noiseVariance(mean);
      const misfit = tf.div(tf.square(tf.sub(target, mean)), tf.add(variance, noiseVar));
      const perPixel = tf.mul(0.5, tf.add(tf.add(misfit, tf.log(noiseVar)), tf.div(variance, noiseVar)));
      return tf.div(tf.sum(tf.mul(perPixel, mask)), tf.maximum(tf.sum(mask), 1)) as tf.Scalar;
    });
}

/** Re-exported so callers that load a saved model can make sure the custom layers are registered. */
export { CentreMaskedConv, DilatedConv };
