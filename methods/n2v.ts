/**
 * Noise2Void (Krull et al. 2019): a U-Net, a small stratified fraction of pixels replaced by a
 * neighbour in each patch, the loss on the replaced pixels only. With --prior the network predicts
 * a Gaussian prior and denoise gives the posterior mean (Laine et al.'s inference).
 */
import type { Method } from './method.js';
import { plainTraining, priorOrPlainDenoiser, removeOffsetOnNoisy, stratifiedPatch, unetNetwork } from './shared.js';

export const n2v: Method = {
  name: 'n2v',
  summary: 'Noise2Void (default): U-Net, stratified masking, loss on the masked pixels',
  paper: {
    authors: 'Krull, Buchholz, Jug',
    title: 'Noise2Void - Learning Denoising from Single Noisy Images',
    venue: 'CVPR',
    year: 2019,
    url: 'https://arxiv.org/abs/1811.10980',
  },
  dims: [2, 3],
  networkKind: 'unet',
  accepts: ['prior', 'masking', 'loss'],
  masking: 'stratified',
  network: (r) => unetNetwork('n2v', r, 'n2v'),
  preparePatch: stratifiedPatch,
  training: plainTraining,
  afterTraining: removeOffsetOnNoisy,
  denoiser: priorOrPlainDenoiser,
};
