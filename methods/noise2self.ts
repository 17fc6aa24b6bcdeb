/**
 * Noise2Self (Batson & Royer 2019): J-invariance; one phase of a k x k (x k) grid masked per step
 * with the donut mean of its neighbours, the loss on that phase (--grid K).
 */
import type { Method } from './method.js';
import { gridPatch, plainTraining, priorOrPlainDenoiser, removeOffsetOnNoisy, unetNetwork } from './shared.js';

export const noise2self: Method = {
  name: 'noise2self',
  summary: 'Noise2Self: one phase of a k x k (x k) grid masked per step with the donut mean (--grid K)',
  paper: {
    authors: 'Batson, Royer',
    title: 'Noise2Self: Blind Denoising by Self-Supervision',
    venue: 'ICML',
    year: 2019,
    url: 'https://arxiv.org/abs/1901.11365',
  },
  dims: [2, 3],
  networkKind: 'unet',
  accepts: ['grid', 'prior', 'loss'],
  masking: 'grid',
  network: (r) => unetNetwork('noise2self', r, 'n2v'),
  preparePatch: gridPatch,
  settings: (_opts, prep) => ({ grid: prep.grid }),
  training: plainTraining,
  afterTraining: removeOffsetOnNoisy,
  denoiser: priorOrPlainDenoiser,
};
