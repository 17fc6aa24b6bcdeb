/**
 * DivNoising (Prakash, Lalit, Tomancak, Krull, Jug, ICLR 2021): a fully convolutional VAE
 * (models/vae.ts) trained on the noisy patches by the ELBO whose likelihood is the noise model:
 *
 *   loss per pixel = -log p(x | s = decoder(z)) + KL(q(z | x) || N(0, I)) / pixels,  z ~ q(z | x),
 *
 * so the decoder can only explain what the noise model does not: it learns the clean signal.
 * Denoise encodes the image once and decodes `samples` posterior samples z = mu + sigma eps; it
 * writes their mean (the MMSE estimate), their per-pixel standard deviation (--uncertainty) or one
 * sample (--write-samples). Each eps is a function of the seed, the sample index and the latent
 * position in the whole image (positionalNormals), never of the tile: any tiling, resume or shard
 * draws the same samples.
 */
import * as tf from '@tensorflow/tfjs-core';
import type * as tfl from '@tensorflow/tfjs-layers';
import { UsageError } from '../core/errors.js';
import type { VaeNetwork } from '../models/network.js';
import { splitLatent, vaeDecoder, vaeEncoder } from '../models/vae.js';
import type { NoiseLikelihood } from '../noise/likelihood.js';
import { manifestNoiseLikelihood, requireNoiseModel } from './likelihood.js';
import type { Method, SamplingOptions } from './method.js';
import { outputLossTraining, vaeNetwork, wholePatch } from './shared.js';

/** The ELBO per pixel (negated) over the pixels of `mask`: the model's output is [s, kl] (models/vae.ts). */
export function divnoisingLoss(likelihood: NoiseLikelihood, output: tf.Tensor, observed: tf.Tensor, mask: tf.Tensor): tf.Scalar {
  return tf.tidy(() => {
    const [signal, kl] = tf.split(output, 2, output.rank - 1);
    const perPixel = tf.sub(kl, likelihood(signal, observed));
    return tf.div(tf.sum(tf.mul(perPixel, mask)), tf.maximum(tf.sum(mask), 1)) as tf.Scalar;
  });
}

/** A 32-bit integer hash (lowbias32 by C. Wellons): well mixed, cheap, the same in every JS engine. */
function mix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x7feb352d);
  h ^= h >>> 15;
  h = Math.imul(h, 0x846ca68b);
  h ^= h >>> 16;
  return h >>> 0;
}

/**
 * Standard normals for a batch of latent tensors [B, (Z,) Y, X, C]: the value at latent position p
 * (tile origin + index, in latent units of the whole image), channel c, of sample k is a hash of
 * (seed, k, p, c) through Box-Muller. `origins[b]` is tile b's latent origin (ZYX / YX).
 */
export function positionalNormals(seed: number, sample: number, origins: readonly (readonly number[])[], shape: readonly number[]): Float32Array {
  const spatial = shape.slice(1, -1);
  const dims = spatial.length;
  const channels = shape[shape.length - 1];
  const out = new Float32Array(shape.reduce((a, b) => a * b, 1));
  const sampleKey = mix32(mix32(seed >>> 0) ^ sample);
  const [sz, sy, sx] = dims === 3 ? spatial : [1, ...spatial];
  let o = 0;
  for (let b = 0; b < shape[0]; b++) {
    const origin = origins[b] ?? new Array<number>(dims).fill(0);
    const [oz, oy, ox] = dims === 3 ? origin : [0, ...origin];
    for (let z = 0; z < sz; z++) {
      const hz = mix32(sampleKey ^ ((oz + z) | 0));
      for (let y = 0; y < sy; y++) {
        const hy = mix32(hz ^ ((oy + y) | 0));
        for (let x = 0; x < sx; x++) {
          const hx = mix32(hy ^ ((ox + x) | 0));
          for (let c = 0; c < channels; c++) {
            const h = mix32(hx ^ c);
            const u1 = (mix32(h ^ 0x68e31da4) + 0.5) / 4294967296;
            const u2 = (mix32(h ^ 0xb5297a4d) + 0.5) / 4294967296;
            out[o++] = Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
          }
        }
      }
    }
  }
  return out;
}

/**
 * The standalone encoder and decoder of each loaded model, made once: the decoder holds copies of
 * the weights, and denoise asks for a tile function per output and image.
 */
const parts = new WeakMap<tfl.LayersModel, { encoder: tfl.LayersModel; decoder: tfl.LayersModel }>();

function vaeParts(model: tfl.LayersModel, cfg: VaeNetwork): { encoder: tfl.LayersModel; decoder: tfl.LayersModel } {
  let p = parts.get(model);
  if (!p) {
    p = { encoder: vaeEncoder(model), decoder: vaeDecoder(model, cfg) };
    parts.set(model, p);
  }
  return p;
}

/** Samples averaged when the caller gives no SamplingOptions (pipeline/denoise.ts DEFAULT_SAMPLES). */
const FALLBACK_SAMPLING: SamplingOptions = { samples: 100, seed: 1 };

export const divnoising: Method = {
  name: 'divnoising',
  summary: 'DivNoising: a convolutional VAE trained by the ELBO with the noise model (--prior, required) as likelihood; denoise: MMSE of --samples posterior samples',
  paper: {
    authors: 'Prakash, Lalit, Tomancak, Krull, Jug',
    title: 'Fully Unsupervised Diversity Denoising with Convolutional Variational Autoencoders',
    venue: 'ICLR',
    year: 2021,
    url: 'https://arxiv.org/abs/2006.06072',
  },
  dims: [2, 3],
  networkKind: 'vae',
  accepts: ['prior'],
  masking: 'none',
  likelihood: true,
  ownLoss: { name: 'divnoising-elbo', refusesLossOption: 'its loss is the ELBO with the noise model as likelihood' },
  validateOptions: (opts) => requireNoiseModel('divnoising', opts),
  network: (r) => vaeNetwork('divnoising', r),
  preparePatch: wholePatch,
  training(context) {
    const likelihood = context.noiseLikelihood;
    if (!likelihood) throw new Error('divnoising trains with a noise likelihood; the trainer gave none');
    return outputLossTraining((output, targets, masks) => divnoisingLoss(likelihood, output, targets, masks));
  },
  denoiser(model, manifest, output, sampling = FALLBACK_SAMPLING) {
    if (output === 'prior-mean') throw new UsageError('--prior-mean does not apply to divnoising (it has no per-pixel prior); the MMSE is the default output');
    const cfg = manifest.network as VaeNetwork;
    if (cfg.kind !== 'vae') throw new UsageError(`a divnoising model holds a VAE, this one holds a ${cfg.kind ?? 'unet'}`);
    if (!(Number.isInteger(sampling.samples) && sampling.samples >= 1)) throw new UsageError(`--samples must be a positive integer, got ${sampling.samples}`);
    // Checked now: a folder without its noise model is refused before any tile.
    manifestNoiseLikelihood(manifest);
    const { encoder, decoder } = vaeParts(model, cfg);
    const scale = 2 ** cfg.depth;
    return (x, tiles) => {
      const [mu, std] = tf.tidy(() => {
        const [m, logVariance] = splitLatent(encoder.predict(x) as tf.Tensor);
        return [m, tf.exp(tf.mul(logVariance, 0.5))];
      });
      // Tile origins are on the pooling grid (operators/tileGrid.ts), so they divide exactly.
      const origins = (tiles ?? []).map((t) => t.read.origin.map((o) => Math.floor(o / scale)));
      const draw = (k: number): tf.Tensor =>
        tf.tidy(() => decoder.predict(tf.add(mu, tf.mul(std, tf.tensor(positionalNormals(sampling.seed, k, origins, mu.shape), mu.shape)))) as tf.Tensor);
      try {
        if (output === 'sample') return draw(sampling.sampleIndex ?? 0);
        let sum: tf.Tensor | null = null;
        let sumOfSquares: tf.Tensor | null = null;
        for (let k = 0; k < sampling.samples; k++) {
          const s = draw(k);
          const next = tf.tidy(() => [sum ? tf.add(sum, s) : tf.clone(s), sumOfSquares ? tf.add(sumOfSquares, tf.square(s)) : tf.square(s)]);
          tf.dispose([s, sum, sumOfSquares].filter((t): t is tf.Tensor => t !== null));
          [sum, sumOfSquares] = next;
        }
        const total = sum as unknown as tf.Tensor;
        const totalSquares = sumOfSquares as unknown as tf.Tensor;
        const result = tf.tidy(() => {
          const mean = tf.div(total, sampling.samples);
          return output === 'uncertainty' ? tf.sqrt(tf.relu(tf.sub(tf.div(totalSquares, sampling.samples), tf.square(mean)))) : mean;
        });
        tf.dispose([total, totalSquares]);
        return result;
      } finally {
        tf.dispose([mu, std]);
      }
    };
  },
};
