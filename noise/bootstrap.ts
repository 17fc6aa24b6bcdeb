/**
 * A noise model for users with no calibration frames, bootstrapped as the DivNoising authors do:
 * denoise the noisy images with a trained denoiser, take its output as the pseudo-clean signal and
 * fit the GMM (or the histogram model) to (denoised, noisy) pairs. The denoiser's own error adds to the fitted variance
 * (a smoothing denoiser's bias shows up as noise), so the model is as good as the denoiser.
 * The denoiser is a function, so this file names no network: the CLI passes a trained model's
 * in-memory predictor (pipeline/denoise.ts denoiseVolume).
 */
import { InputError } from '../core/errors.js';
import { Rng } from '../core/rng.js';
import type { Volume } from '../core/volume.js';
import { fitGmmNoiseModel, type GmmFitOptions } from './gmmFit.js';
import { histogramNoiseModelFromPairs } from './histogramFit.js';
import type { CalibratedNoiseModel, GmmNoiseModel } from './model.js';
import { denoisedPairs } from './pairs.js';

/** Pairs kept per image (a random subset beyond it): bounds memory whatever the images' size. */
export const BOOTSTRAP_MAX_PAIRS_PER_IMAGE = 1 << 20;

export interface BootstrapImage {
  name: string;
  /** Read on demand, one image in memory at a time (with its denoised copy). */
  read: () => Promise<Volume>;
}

export interface BootstrapOptions extends Omit<GmmFitOptions, 'signalFrom'> {
  /** Which model to fit: 'gmm' (default) or 'histogram'. */
  model?: 'gmm' | 'histogram';
  maxPairsPerImage?: number;
  onImage?: (name: string, index: number, count: number) => void;
}

export async function bootstrapNoiseModel(
  images: readonly BootstrapImage[],
  denoise: (volume: Volume, name: string) => Promise<Volume>,
  opts: BootstrapOptions = {},
): Promise<GmmNoiseModel | CalibratedNoiseModel> {
  const rng = new Rng((opts.seed ?? 1) ^ 0x5eed);
  const limit = opts.maxPairsPerImage ?? BOOTSTRAP_MAX_PAIRS_PER_IMAGE;
  const kept: { name: string; noisy: Float32Array; denoised: Float32Array; sampleType: Volume['sampleType'] }[] = [];
  for (let n = 0; n < images.length; n++) {
    opts.onImage?.(images[n].name, n, images.length);
    const volume = await images[n].read();
    const denoised = await denoise(volume, images[n].name);
    if (denoised.data.length !== volume.data.length) throw new InputError(images[n].name, `the denoiser returned ${denoised.data.length} values for ${volume.data.length}`);
    let noisy = volume.data;
    let signal = denoised.data;
    if (noisy.length > limit) {
      const nx = new Float32Array(limit);
      const sx = new Float32Array(limit);
      for (let j = 0; j < limit; j++) {
        const i = rng.int(noisy.length);
        nx[j] = noisy[i];
        sx[j] = signal[i];
      }
      noisy = nx;
      signal = sx;
    }
    kept.push({ name: images[n].name, noisy, denoised: signal, sampleType: volume.sampleType });
  }
  const source = images.map((image) => image.name).join(', ');
  const pairs = denoisedPairs(kept);
  if (opts.model === 'histogram') return histogramNoiseModelFromPairs(source, pairs, { seed: opts.seed });
  return fitGmmNoiseModel(source, pairs, { ...opts, signalFrom: 'denoised' });
}
