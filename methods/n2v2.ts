/**
 * N2V2 (Hoeck et al. 2022): Noise2Void with a max-blur-pool U-Net without the top-level skip
 * connection and replacement by the neighbourhood's median: fewer checkerboard artefacts.
 */
import type { Method } from './method.js';
import { plainTraining, priorOrPlainDenoiser, removeOffsetOnNoisy, stratifiedPatch, unetNetwork } from './shared.js';

export const n2v2: Method = {
  name: 'n2v2',
  summary: 'N2V2: blur-pool U-Net without the top skip, median replacement (fewer checkerboard artefacts)',
  paper: {
    authors: 'Hoeck, Buchholz, Breit, Ragan, Jug',
    title: 'N2V2 - Fixing Noise2Void Checkerboard Artifacts with Modified Sampling Strategies and a Tweaked Network Architecture',
    venue: 'ECCV Workshops (BIC)',
    year: 2022,
    url: 'https://arxiv.org/abs/2211.08512',
  },
  dims: [2, 3],
  networkKind: 'unet',
  accepts: ['prior', 'masking', 'loss'],
  masking: 'stratified',
  defaultStrategy: 'median',
  network: (r) => unetNetwork('n2v2', r, 'n2v2'),
  preparePatch: stratifiedPatch,
  training: plainTraining,
  afterTraining: removeOffsetOnNoisy,
  denoiser: priorOrPlainDenoiser,
};
