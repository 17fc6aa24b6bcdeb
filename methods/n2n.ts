/**
 * Noise2Noise (Lehtinen et al. 2018): pairs of independent noisy shots of the same scene; the
 * second shot is the target (--targets).
 */
import type { Method } from './method.js';
import { pairedPatch, plainTraining, priorOrPlainDenoiser, removeOffsetOnPairs, unetNetwork } from './shared.js';

export const n2n: Method = {
  name: 'n2n',
  summary: 'Noise2Noise: needs --targets, the second noisy shot of each input',
  paper: {
    authors: 'Lehtinen, Munkberg, Hasselgren, Laine, Karras, Aittala, Aila',
    title: 'Noise2Noise: Learning Image Restoration without Clean Data',
    venue: 'ICML',
    year: 2018,
    url: 'https://arxiv.org/abs/1803.04189',
  },
  dims: [2, 3],
  networkKind: 'unet',
  accepts: ['targets', 'loss'],
  masking: 'none',
  targets: 'second noisy images',
  network: (r) => unetNetwork('n2n', r, 'n2v'),
  preparePatch: pairedPatch,
  training: plainTraining,
  afterTraining: removeOffsetOnPairs,
  denoiser: priorOrPlainDenoiser,
};
