/**
 * structN2V (Broaddus et al. 2020): Noise2Void for noise correlated along a direction; a
 * structuring element (a short line, or a mask file) around each masked pixel is masked with it, so
 * the correlated neighbours cannot leak the pixel's noise. Needs --struct-mask.
 */
import { UsageError } from '../core/errors.js';
import { liftToDims, parseStructMask, type StructuringElement } from '../models/structMask.js';
import { structMaskPatch } from '../models/structMask.js';
import type { Method } from './method.js';
import { plainTraining, priorOrPlainDenoiser, removeOffsetOnNoisy, unetNetwork } from './shared.js';

function resolveStructMask(spec: string | StructuringElement | undefined, dims: 2 | 3): StructuringElement {
  if (spec === undefined) throw new UsageError('--method structn2v needs --struct-mask');
  return typeof spec === 'string' ? parseStructMask(spec, dims) : liftToDims(spec, dims);
}

export const structn2v: Method = {
  name: 'structn2v',
  summary: 'structN2V for noise correlated along a direction: needs --struct-mask',
  paper: {
    authors: 'Broaddus, Krull, Weigert, Schmidt, Myers',
    title: 'Removing Structured Noise with Self-Supervised Blind-Spot Networks',
    venue: 'ISBI',
    year: 2020,
    url: 'https://doi.org/10.1109/ISBI45749.2020.9098336',
  },
  dims: [2, 3],
  networkKind: 'unet',
  accepts: ['structMask', 'prior', 'masking', 'loss'],
  masking: 'stratified',
  validateOptions(opts) {
    if (opts.structMask === undefined) throw new UsageError('--method structn2v needs --struct-mask (e.g. horizontal:5, vertical:5, or a mask file)');
  },
  patchSettings: (opts, dims) => ({ structMask: resolveStructMask(opts.structMask, dims) }),
  network: (r) => unetNetwork('structn2v', r, 'n2v'),
  preparePatch(p, prep) {
    if (!prep.structMask) throw new Error('structn2v needs a structuring element');
    const { input, mask } = structMaskPatch(p.data, p.shape, prep.structMask, prep.masking, p.rng);
    return { input, target: p.data, mask };
  },
  settings: (opts, prep) =>
    prep.structMask
      ? { structMask: { spec: typeof opts.structMask === 'string' ? opts.structMask : 'element', shape: [...prep.structMask.shape], values: [...prep.structMask.values] } }
      : {},
  training: plainTraining,
  afterTraining: removeOffsetOnNoisy,
  denoiser: priorOrPlainDenoiser,
};
