/**
 * Why neighbor2neighbor validates J-invariantly: on a constructed case its own loss cannot tell the
 * identity (no denoising at all) from a perfect denoiser, while the J-invariant loss ranks them.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { Rng } from '../core/rng.js';
import type { Shape } from '../core/volume.js';
import { getMethod } from '../methods/registry.js';
import type { PatchPreparation, TrainingContext } from '../methods/method.js';
import { defaultGridSide } from '../methods/shared.js';
import { maskedLoss } from '../models/losses.js';
import { prepareValidationPatch } from '../pipeline/trainData.js';

const method = getMethod('neighbor2neighbor');
const shape: Shape = [64, 64];
const patches = 32;
const sigma = 1;

/** Pure noise around a smooth ramp (normalised units): the clean signal is known exactly. */
function ramp(): Float32Array {
  const clean = new Float32Array(64 * 64);
  for (let y = 0; y < 64; y++) for (let x = 0; x < 64; x++) clean[y * 64 + x] = (x + y) / 64 - 1;
  return clean;
}

async function lossOf(prepare: 'training' | 'validation', denoiser: 'identity' | 'perfect'): Promise<number> {
  const clean = ramp();
  const rng = new Rng(11);
  const prep: PatchPreparation = { method, masking: undefined as never, grid: defaultGridSide, seed: 3 };
  const context: TrainingContext = { seed: 3, grid: defaultGridSide, maskedLoss: (p, t, m) => maskedLoss(p, t, m, 'mse') };
  const per = clean.length;
  const inputs = new Float32Array(per * patches);
  const targets = new Float32Array(per * patches);
  const masks = new Float32Array(per * patches);
  for (let i = 0; i < patches; i++) {
    const noisy = clean.map((c) => c + sigma * rng.normal());
    const p = { step: i, shape, data: noisy, rng: rng.fork() };
    const m = prepare === 'validation' ? prepareValidationPatch(p, prep) : method.preparePatch(p, prep);
    inputs.set(m.input, i * per);
    targets.set(m.target, i * per);
    masks.set(m.mask, i * per);
  }
  const batchShape = [patches, ...shape, 1];
  const loss = prepare === 'validation' ? method.validation!.loss(context) : method.training(context).batchLoss;
  const value = tf.tidy(() => {
    // The perfect denoiser returns the clean signal at any resolution it is given (the sub-images are half size).
    const apply = (x: tf.Tensor): tf.Tensor =>
      denoiser === 'identity' ? x : tf.add(tf.zerosLike(x), tf.tensor(subsampledRamp(x.shape[1]!, x.shape[2]!), [1, x.shape[1]!, x.shape[2]!, 1]));
    return loss(apply, tf.tensor(inputs, batchShape), tf.tensor(targets, batchShape), tf.tensor(masks, batchShape));
  });
  const out = (await value.data())[0];
  value.dispose();
  return out;
}

/** The ramp at full size, or at a sub-image's half size (its cells' mean: the ramp is linear, so within 1/64 of each pixel's value). */
function subsampledRamp(height: number, width: number): Float32Array {
  const step = 64 / height;
  const out = new Float32Array(height * width);
  for (let y = 0; y < height; y++) for (let x = 0; x < width; x++) out[y * width + x] = ((x + 0.5) * step - 0.5 + (y + 0.5) * step - 0.5) / 64 - 1;
  return out;
}

describe('neighbor2neighbor validation', () => {
  beforeAll(async () => {
    await tf.setBackend('cpu');
  });

  it('its pair loss scores the identity and a perfect denoiser alike (2 sigma^2); the J-invariant loss ranks the perfect one first', async () => {
    const pairIdentity = await lossOf('training', 'identity');
    const pairPerfect = await lossOf('training', 'perfect');
    // Identity: |g1 - g2|^2 = 2 sigma^2, no gap. Perfect: |s - g2|^2 = sigma^2, gap -n2: sigma^2.
    expect(pairIdentity).toBeCloseTo(2 * sigma * sigma, 0);
    expect(pairPerfect).toBeCloseTo(2 * sigma * sigma, 0);
    expect(Math.abs(pairIdentity - pairPerfect) / pairPerfect).toBeLessThan(0.06);

    const jIdentity = await lossOf('validation', 'identity');
    const jPerfect = await lossOf('validation', 'perfect');
    // Perfect: the noise variance. Identity: the donut mean's error on top, sigma^2 (1 + 1/8) inside the patch.
    expect(jPerfect).toBeCloseTo(sigma * sigma, 1);
    console.log(`pair loss: identity ${pairIdentity.toFixed(3)}, perfect ${pairPerfect.toFixed(3)}; J-invariant: identity ${jIdentity.toFixed(3)}, perfect ${jPerfect.toFixed(3)}`);
    expect(jIdentity / jPerfect).toBeGreaterThan(1.08);
  });

  it('the validation patches mask one grid phase each with the donut mean, every phase in turn', () => {
    const prep: PatchPreparation = { method, masking: undefined as never, grid: defaultGridSide, seed: 3 };
    const rng = new Rng(5);
    const data = Float32Array.from({ length: 64 }, () => rng.normal());
    const seen = new Set<string>();
    for (let step = 0; step < 16; step++) {
      const m = prepareValidationPatch({ step, shape: [8, 8], data, rng: new Rng(step) }, prep);
      const masked = [...m.mask.keys()].filter((i) => m.mask[i] === 1);
      expect(masked).toHaveLength(4);
      seen.add(masked.join(','));
      // The target is the untouched patch; the input differs from it only on the masked pixels.
      expect(m.target).toEqual(data);
      for (let i = 0; i < 64; i++) expect(m.input[i] !== data[i]).toBe(m.mask[i] === 1);
    }
    expect(seen.size).toBe(16);
  });
});
