/**
 * What the likelihood methods (pn2v, divnoising: Method.likelihood) share: the check that a noise
 * model was given, and the noise model of a saved model folder as a normalised likelihood.
 */
import { InputError, UsageError } from '../core/errors.js';
import type { ModelManifest } from '../models/io.js';
import { normalisedNoiseLikelihood, type NoiseLikelihood } from '../noise/likelihood.js';
import type { MethodOptions } from './method.js';

/** --prior is required and must be a noise model (given, or the images' fits), not a learned sigma. */
export function requireNoiseModel(method: string, opts: MethodOptions): void {
  if (opts.prior === undefined) {
    throw new UsageError(
      `--method ${method} needs the noise model p(x|s) its loss uses: --prior noise-model.json (a GMM from 'blindspot noise' is used whole; a histogram or NLF model by its Poisson-Gaussian summary), poisson-gaussian:A,B, gaussian:S or nlf`,
    );
  }
  if (opts.prior === 'learned') throw new UsageError(`--method ${method} needs a fixed noise model: --prior learned does not apply (give a noise-model file, poisson-gaussian:A,B, gaussian:S or nlf)`);
}

/** The model folder's noise likelihood (normalised units); InputError when the manifest lacks it. */
export function manifestNoiseLikelihood(manifest: ModelManifest): NoiseLikelihood {
  if (!manifest.noiseModel) throw new InputError(`${manifest.method} model`, `its manifest has no noiseModel: retrain it with this blindspot`);
  return normalisedNoiseLikelihood(manifest.noiseModel, manifest.normalisation);
}
