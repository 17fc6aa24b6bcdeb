/**
 * D-BSN (Wu et al. 2020): centrally masked and dilated convolutions (blind by architecture), trained
 * with the CNN_est loss: the network predicts the clean value's mean and variance, the noise
 * variance per pixel comes from a noise model (--prior, by default the training images'
 * noise-level fits); denoise gives the posterior mean.
 */
import { dbsnLoss } from '../models/dbsn.js';
import type { Method } from './method.js';
import { dbsnNetwork, outputLossTraining, priorOrPlainDenoiser, wholePatch } from './shared.js';

export const dbsn: Method = {
  name: 'dbsn',
  summary: 'D-BSN: centrally masked + dilated convolutions, trained with the CNN_est loss; the noise\n               variance comes from --prior, by default the training images\' noise-level fits',
  paper: {
    authors: 'Wu, Liu, Cao, Ren, Zuo',
    title: 'Unpaired Learning of Deep Image Denoising',
    venue: 'ECCV',
    year: 2020,
    url: 'https://arxiv.org/abs/2008.13711',
  },
  dims: [2, 3],
  networkKind: 'dbsn',
  accepts: ['prior'],
  masking: 'none',
  defaultPrior: 'nlf',
  ownLoss: { name: 'dbsn-nll', refusesLossOption: 'it trains with its own likelihood (CNN_est loss)' },
  network: (r) => dbsnNetwork('dbsn', r),
  preparePatch: wholePatch,
  training(context) {
    if (!context.noiseVariance) throw new Error('dbsn trains with a noise model (the trainer gives one by default)');
    return outputLossTraining(dbsnLoss(context.noiseVariance));
  },
  // No afterTraining: always a Gaussian-prior model, whose posterior brings the pixel back in.
  denoiser: priorOrPlainDenoiser,
};
