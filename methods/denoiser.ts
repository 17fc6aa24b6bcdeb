/**
 * The tile function denoise runs for a loaded model: its method's denoiser (the plain prediction,
 * or a Gaussian prior's posterior mean, standard deviation or prior mean). Prediction code calls
 * this and names no method.
 */
import type { LayersModel } from '@tensorflow/tfjs-layers';
import type { ModelManifest } from '../models/io.js';
import type { DenoiseOutput, SamplingOptions, TileFunction } from './method.js';
import { methods } from './registry.js';
import { priorOrPlainDenoiser } from './shared.js';

export function denoisingTileModel(model: LayersModel, manifest: ModelManifest, output: DenoiseOutput = 'denoised', sampling?: SamplingOptions): LayersModel | TileFunction {
  // A folder of a method this build does not know (a plugin's, a newer one's) still has a manifest
  // that says how to use it: the default denoiser reads only its prior.
  const method = methods.get(manifest.method);
  return (method?.denoiser ?? priorOrPlainDenoiser)(model, manifest, output, sampling);
}

export type { DenoiseOutput };
