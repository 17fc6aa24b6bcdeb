/**
 * Noise2Info (Wang et al. 2023): grid masking as Noise2Self, trained with L_in + 2 sigma L_ex, where
 * sigma (an upper bound of the noise level, normalised units) is estimated from the model at every
 * validation by sorted matching and only goes down (models/noise2info.ts, Algorithm 2). sigma is
 * the method's state: kept in checkpoints, recorded in the manifest and the history.
 */
import * as tf from '@tensorflow/tfjs-core';
import type * as tfl from '@tensorflow/tfjs-layers';
import { Rng } from '../core/rng.js';
import type { MethodSettings } from '../models/io.js';
import {
  NOISE2INFO_SQRT_EPSILON,
  estimateNoise2InfoSigma,
  initialNoise2InfoSigma,
  noise2InfoExternalLoss,
  noise2InfoLoss,
  updateNoise2InfoSigma,
} from '../models/noise2info.js';
import { mixSeed } from '../operators/samplePatches.js';
import type { Method, PlainLossRewrite, ValidationBatch } from './method.js';
import { gridPatch, priorOrPlainDenoiser, removeOffsetOnNoisy, unetNetwork } from './shared.js';

type Noise2InfoState = NonNullable<MethodSettings['noise2info']>;

/**
 * Noise2Info's sigma upper bound (models/noise2info.ts) on the validation patches: F(X) on each
 * unmasked patch (the target), l_ex from F(X_J^c) on its grid-masked copy.
 */
async function estimateNoise2InfoSigmaOn(model: tfl.LayersModel, batches: readonly ValidationBatch[], rng: Rng): Promise<number> {
  const noisy: Float32Array[] = [];
  const predicted: Float32Array[] = [];
  const maskedPredicted: Float32Array[] = [];
  const masks: Float32Array[] = [];
  for (const b of batches) {
    // Read asynchronously: webgpu cannot read a tensor synchronously in Node (the values are the same).
    const outputs = tf.tidy(() => [
      model.apply(tf.tensor(b.targets, b.shape), { training: false }) as tf.Tensor,
      model.apply(tf.tensor(b.inputs, b.shape), { training: false }) as tf.Tensor,
    ]);
    const [full, masked] = (await Promise.all(outputs.map((t) => t.data()))) as Float32Array[];
    tf.dispose(outputs);
    const per = b.targets.length / b.shape[0];
    for (let i = 0; i < b.shape[0]; i++) {
      noisy.push(b.targets.subarray(i * per, (i + 1) * per));
      predicted.push(full.subarray(i * per, (i + 1) * per));
      maskedPredicted.push(masked.subarray(i * per, (i + 1) * per));
      masks.push(b.masks.subarray(i * per, (i + 1) * per));
    }
  }
  const concat = (parts: Float32Array[]): Float32Array => {
    const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
    let o = 0;
    for (const p of parts) {
      out.set(p, o);
      o += p.length;
    }
    return out;
  };
  const externalLoss = noise2InfoExternalLoss(concat(predicted), concat(maskedPredicted), concat(masks));
  return estimateNoise2InfoSigma(noisy, predicted, { externalLoss, rng }).sigma;
}

/**
 * L_in + 2 sigma L_ex as two masked MSEs, one per network pass. With F = F(X), G = F(X_J^c) taken
 * without gradient, N pixels, M = max(sum J, 1), I = sum J (F - G)^2 / M and c = sigma / sqrt(I + eps),
 * the loss's gradient is that of
 *   sum_p w_p (F_p - a_p)^2,  w_p = 1/N + c J_p / M,  a_p = (X_p / N + c J_p G_p / M) / w_p   (pass on X)
 * plus c sum J (G - F)^2 / M with F as the target (pass on X_J^c): the square root's derivative
 * splits the invariance term between the two passes. The constant makes up the loss's value.
 */
function noise2InfoAsMaskedLosses(sigmaNow: () => number): PlainLossRewrite {
  return {
    loss: 'mse',
    // batchLoss applies the network to the unmasked patch (the targets) first, then to the masked one.
    forwardInputs: (batch) => [batch.targets, batch.inputs],
    rewrite(batch, [full, masked]) {
      const { targets: noisy, masks } = batch;
      const n = noisy.length;
      let maskSum = 0;
      let invarianceSum = 0;
      let internalSum = 0;
      for (let i = 0; i < n; i++) {
        const d = full[i] - masked[i];
        maskSum += masks[i];
        invarianceSum += masks[i] * d * d;
        internalSum += (full[i] - noisy[i]) ** 2;
      }
      const count = Math.max(maskSum, 1);
      const invariance = invarianceSum / count;
      const external = Math.sqrt(invariance + NOISE2INFO_SQRT_EPSILON);
      const sigma = sigmaNow();
      const c = sigma / external;
      // Weights scaled by N (each >= 1, so the graph's max(sum, 1) is the sum itself): the term's scale is their sum / N.
      const weights = new Float32Array(n);
      const pulled = new Float32Array(n);
      let weightSum = 0;
      let weightedSquares = 0;
      for (let i = 0; i < n; i++) {
        const w = 1 / n + (c * masks[i]) / count;
        const a = (noisy[i] / n + (c * masks[i] * masked[i]) / count) / w;
        weights[i] = w * n;
        pulled[i] = a;
        weightSum += w;
        weightedSquares += w * (full[i] - a) ** 2;
      }
      const loss = internalSum / n + 2 * sigma * external;
      return {
        terms: [
          { batch: { shape: batch.shape, inputs: noisy, targets: pulled, masks: weights }, scale: weightSum, repeatsForward: true },
          { batch: { shape: batch.shape, inputs: batch.inputs, targets: full, masks }, scale: c, repeatsForward: true },
        ],
        offset: loss - weightedSquares - c * invariance,
      };
    },
  };
}

export const noise2info: Method = {
  name: 'noise2info',
  summary: 'Noise2Info: L_in + 2 sigma L_ex, sigma estimated at every validation (grid masking, --grid K)',
  paper: {
    authors: 'Wang, Di, Chen, Ng',
    title: 'Noise2Info: Noisy Image to Information of Noise for Self-Supervised Image Denoising',
    venue: 'ICCV',
    year: 2023,
    url: 'https://openaccess.thecvf.com/content/ICCV2023/html/Wang_Noise2Info_Noisy_Image_to_Information_of_Noise_for_Self-Supervised_Image_ICCV_2023_paper.html',
  },
  dims: [2, 3],
  networkKind: 'unet',
  accepts: ['grid'],
  masking: 'grid',
  ownLoss: { name: 'noise2info', refusesLossOption: 'its loss is L_in + 2 sigma L_ex, squared errors by definition' },
  network: (r) => unetNetwork('noise2info', r, 'n2v'),
  preparePatch: gridPatch,
  settings: (_opts, prep) => ({ grid: prep.grid }),
  training(context) {
    // The checkpoint keeps sigma under the key it always had, so older checkpoints resume.
    let state: Noise2InfoState = (context.saved?.noise2info as Noise2InfoState | undefined) ?? { sigma: initialNoise2InfoSigma, estimates: [] };
    return {
      // F(X) on the unmasked patch (the target) and F(X_J^c) on the masked input.
      batchLoss: (apply, inputs, targets, masks) => noise2InfoLoss(apply(targets), apply(inputs), targets, masks, state.sigma),
      plainMaskedLoss: noise2InfoAsMaskedLosses(() => state.sigma),
      async onValidation({ model, batches, step }) {
        // Algorithm 2's per-epoch update, once per validation, on the fixed validation patches.
        const estimate = await estimateNoise2InfoSigmaOn(model, batches, new Rng(mixSeed(context.seed, step, 0x6e32)));
        const sigma = updateNoise2InfoSigma(state.sigma, estimate);
        state = { sigma, estimates: [...state.estimates, { step, estimate, sigma }] };
        return { record: { noise2infoSigma: sigma }, events: [{ type: 'noise2info-sigma', step, estimate, sigma }] };
      },
      settings: () => ({ noise2info: state }),
      checkpointState: () => ({ noise2info: state }),
    };
  },
  afterTraining: removeOffsetOnNoisy,
  denoiser: priorOrPlainDenoiser,
};
