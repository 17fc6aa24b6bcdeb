/**
 * The switches that make our n2v train as the PyTorch reference (../shared/reference/n2v_torch.py)
 * does, beside the recipe both share (U-Net depth 2 / 32 filters / BN, 64x64 patches, batch 16,
 * Adam 4e-4, 1.5% stratified masking, uniform 5x5 replacement without centre, MSE on masked pixels).
 * bench:parity and bench:bsd68 --recipe reference use it; docs/parity.md says what each one does.
 */
import type { NetworkOverrides } from '../methods/method.js';
import type { TrainOptions } from '../pipeline/train.js';

export interface BenchRecipe {
  network: NetworkOverrides;
  train: Pick<TrainOptions, 'adamEpsilon' | 'valFraction' | 'learningRateSchedule'>;
}

/** 'level' widths, PyTorch init, BN epsilon 1e-5, Adam epsilon 1e-8, no validation split, constant learning rate. */
export function referenceRecipe(): BenchRecipe {
  return {
    network: { widths: 'level', init: 'torch', batchNormEpsilon: 1e-5 },
    train: { adamEpsilon: 1e-8, valFraction: 0, learningRateSchedule: 'constant' },
  };
}

/** The recipe by name ('default': blindspot's defaults), with single-factor overrides from bench flags. */
export function benchRecipe(name: string, flags: Map<string, string>): BenchRecipe {
  if (name !== 'reference' && name !== 'default') throw new Error(`--recipe reference|default, got ${name}`);
  const base: BenchRecipe = name === 'reference' ? referenceRecipe() : { network: {}, train: {} };
  const network: NetworkOverrides = { ...base.network };
  const train = { ...base.train };
  if (flags.has('widths')) network.widths = flags.get('widths') as NetworkOverrides['widths'];
  if (flags.has('init')) network.init = flags.get('init') as NetworkOverrides['init'];
  if (flags.has('bn-eps')) network.batchNormEpsilon = Number(flags.get('bn-eps'));
  if (flags.has('adam-eps')) train.adamEpsilon = Number(flags.get('adam-eps'));
  if (flags.has('val-fraction')) train.valFraction = Number(flags.get('val-fraction'));
  if (flags.has('lr-schedule')) train.learningRateSchedule = flags.get('lr-schedule') as TrainOptions['learningRateSchedule'];
  return { network, train };
}
