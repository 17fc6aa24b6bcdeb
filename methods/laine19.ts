/**
 * Laine et al. 2019: the blind spot built into the network (four rotated half-plane branches), so
 * every pixel is in the loss; with --prior (a noise model, 'learned' or 'nlf') it predicts a
 * Gaussian prior and denoise gives the posterior mean.
 */
import type { Method } from './method.js';
import { laine19Network, plainTraining, priorOrPlainDenoiser, removeOffsetOnNoisy, wholePatch } from './shared.js';

export const laine19: Method = {
  name: 'laine19',
  summary: 'Laine et al. 2019: blind spot by architecture, every pixel in the loss; with --prior the\n               Bayesian posterior mean',
  paper: {
    authors: 'Laine, Karras, Lehtinen, Aila',
    title: 'High-Quality Self-Supervised Deep Image Denoising',
    venue: 'NeurIPS',
    year: 2019,
    url: 'https://arxiv.org/abs/1901.10277',
  },
  dims: [2, 3],
  networkKind: 'laine19',
  accepts: ['prior', 'loss'],
  masking: 'none',
  network: (r) => laine19Network('laine19', r),
  preparePatch: wholePatch,
  training: plainTraining,
  afterTraining: removeOffsetOnNoisy,
  denoiser: priorOrPlainDenoiser,
};
