/**
 * CARE (Weigert et al. 2018): supervised restoration from (noisy, clean) pairs (--targets: the
 * clean images).
 */
import type { Method } from './method.js';
import { pairedPatch, plainTraining, priorOrPlainDenoiser, removeOffsetOnPairs, unetNetwork } from './shared.js';

export const care: Method = {
  name: 'care',
  summary: 'CARE (supervised): needs --targets, the clean image of each input',
  paper: {
    authors: 'Weigert, Schmidt, Boothe, et al.',
    title: 'Content-aware image restoration: pushing the limits of fluorescence microscopy',
    venue: 'Nature Methods',
    year: 2018,
    url: 'https://doi.org/10.1038/s41592-018-0216-7',
  },
  dims: [2, 3],
  networkKind: 'unet',
  accepts: ['targets', 'loss'],
  masking: 'none',
  targets: 'clean images',
  network: (r) => unetNetwork('care', r, 'n2v'),
  preparePatch: pairedPatch,
  training: plainTraining,
  afterTraining: removeOffsetOnPairs,
  denoiser: priorOrPlainDenoiser,
};
