/**
 * The N2V / N2V2 U-Net (CSBDeep's `unet_block` as used by n2v), 2D (NHWC) and 3D (NDHWC), fully
 * convolutional with a linear output the size of the input (1 channel, or 2 for a Gaussian prior).
 */
import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';
import { Rng } from '../core/rng.js';
import { CentredMaxBlurPool, ChannelBatchNorm, MaxBlurPool, NearestUpSampling, type BlurPoolAlignment } from './layers.js';

export interface UNetConfig {
  dims: 2 | 3;
  /** Number of poolings. */
  depth: number;
  /** Filters of the first level; doubled per level down. */
  filters: number;
  /** Convolution kernel side, odd (same on every spatial axis). */
  kernelSize: number;
  batchNorm: boolean;
  /** 'n2v2': max-blur-pool and no skip connection at the top level (Hoeck et al. 2022). */
  variant: 'n2v' | 'n2v2';
  /**
   * n2v2 only: where the max-blur-pool's blur window sits. 'centred' (new models; careamics'
   * kornia-style layer): on the pooled pair, so a pooled feature lies where nearest upsampling puts
   * it back. 'trailing' (n2v's Keras layer, TF 'same' padding; n2v2 models saved without this field):
   * one pixel later per pooling, so without the top skip the decoder must learn to shift back by
   * 1 pixel per level.
   */
  blurPool?: BlurPoolAlignment;
  /** 1 (the denoised value), 2 (mean and log variance of a Gaussian prior, models/bayes.ts) or S (PN2V's prior samples); default 1. */
  outputChannels?: number;
  /**
   * Convolution widths. 'halving' (absent: models saved before the field): CSBDeep's, as n2v uses it,
   * the last conv of the bottom and of each decoder level has the width of the level above.
   * 'level': every conv has its level's width (the PyTorch reference U-Net, bench/n2v_torch_parity.py:
   * at depth 2 / 32 filters about 470k weights instead of 333k).
   */
  widths?: UNetWidths;
  /**
   * Initial weights. 'glorot' (absent: models trained before the field): Keras' glorot-uniform
   * kernels, zero biases. 'torch' (defaultUNetConfig's): PyTorch's Conv default, kaiming-uniform with
   * a = sqrt(5), i.e. uniform(+-1/sqrt(fan_in)) for kernels and biases.
   */
  init?: UNetInit;
  /** Batch-norm epsilon; absent: 1e-3 (Keras'). PyTorch's is 1e-5. */
  batchNormEpsilon?: number;
}

export type UNetWidths = 'halving' | 'level';
export type UNetInit = 'glorot' | 'torch';

/**
 * The U-Net every method starts from. Its initialisation is PyTorch's ('torch'): with batch norm
 * after every conv, glorot-uniform's 1.7x larger kernels turn 1.7x slower under Adam, and our N2V
 * trailed the PyTorch reference by 3 dB at 50 steps and 0.6 dB at 300-600 (docs/parity.md).
 */
export const defaultUNetConfig = (dims: 2 | 3): UNetConfig => ({ dims, depth: 2, filters: 32, kernelSize: 3, batchNorm: true, variant: 'n2v', init: 'torch' });

export interface UNetGeometry {
  /** Every spatial size must be a multiple of this (2^depth). */
  sizeMultiple: number;
  /** Exact receptive-field half-width in pixels, per axis: max over both sides and all output positions. */
  receptiveRadius: number;
  /** Pixels an output depends on before it (towards index 0), max over output positions. */
  receptiveBefore: number;
  /** Pixels an output depends on after it, max over output positions. */
  receptiveAfter: number;
}

function validateConfig(cfg: UNetConfig): void {
  if (cfg.dims !== 2 && cfg.dims !== 3) throw new RangeError(`U-Net dims must be 2 or 3, got ${String(cfg.dims)}`);
  if (!Number.isInteger(cfg.depth) || cfg.depth < 0) throw new RangeError(`U-Net depth must be an integer >= 0, got ${cfg.depth}`);
  if (!Number.isInteger(cfg.filters) || cfg.filters < 1) throw new RangeError(`U-Net filters must be a positive integer, got ${cfg.filters}`);
  if (!Number.isInteger(cfg.kernelSize) || cfg.kernelSize < 1 || cfg.kernelSize % 2 === 0) {
    throw new RangeError(`U-Net kernelSize must be a positive odd integer, got ${cfg.kernelSize}`);
  }
  if (cfg.outputChannels !== undefined && !(Number.isInteger(cfg.outputChannels) && cfg.outputChannels >= 1)) {
    throw new RangeError(`U-Net outputChannels must be a positive integer, got ${cfg.outputChannels}`);
  }
  if (cfg.variant !== 'n2v' && cfg.variant !== 'n2v2') throw new RangeError(`U-Net variant must be 'n2v' or 'n2v2', got ${String(cfg.variant)}`);
  if (cfg.blurPool !== undefined && cfg.blurPool !== 'centred' && cfg.blurPool !== 'trailing') {
    throw new RangeError(`U-Net blurPool must be 'centred' or 'trailing', got ${String(cfg.blurPool)}`);
  }
  if (cfg.widths !== undefined && cfg.widths !== 'halving' && cfg.widths !== 'level') throw new RangeError(`U-Net widths must be 'halving' or 'level', got ${String(cfg.widths)}`);
  if (cfg.init !== undefined && cfg.init !== 'glorot' && cfg.init !== 'torch') throw new RangeError(`U-Net init must be 'glorot' or 'torch', got ${String(cfg.init)}`);
  if (cfg.batchNormEpsilon !== undefined && !(cfg.batchNormEpsilon > 0 && cfg.batchNormEpsilon < 1)) {
    throw new RangeError(`U-Net batchNormEpsilon must be in (0, 1), got ${cfg.batchNormEpsilon}`);
  }
}

/**
 * PyTorch's default Conv initialiser: kaiming_uniform(a = sqrt(5)) has bound gain * sqrt(3 / fan_in)
 * with gain sqrt(2 / (1 + a^2)), i.e. 1 / sqrt(fan_in); the bias draws from the same bound.
 * tfjs' varianceScaling (scale 1/3, fan_in, uniform) gives sqrt(3 * scale / fan_in), the same bound.
 */
function torchConvInitialisers(seed: () => number): { kernelInitializer: () => ReturnType<typeof tfl.initializers.zeros>; biasInitializer: (fanIn: number) => ReturnType<typeof tfl.initializers.zeros> } {
  return {
    kernelInitializer: () => tfl.initializers.varianceScaling({ scale: 1 / 3, mode: 'fanIn', distribution: 'uniform', seed: seed() }),
    biasInitializer: (fanIn) => tfl.initializers.randomUniform({ minval: -1 / Math.sqrt(fanIn), maxval: 1 / Math.sqrt(fanIn), seed: seed() }),
  };
}

/** The blur-pool alignment of an n2v2 config (absent: 'trailing', what models saved before the field used). */
export function blurPoolAlignment(cfg: UNetConfig): BlurPoolAlignment {
  return cfg.blurPool ?? 'trailing';
}


const convsPerLevel = 2;

/**
 * Fully convolutional U-Net: per level two convs (kernelSize, 'same', [batchnorm], relu), pooling 2
 * (max, or max-blur for n2v2), two convs at the bottom, nearest upsampling 2, concatenation with the
 * skip (none at the top level for n2v2), two convs; a final linear 1x1 conv. Filter counts follow
 * CSBDeep: the last conv of the bottom and of each decoder level halves the count for the level above.
 * The same seed gives the same initial weights.
 */
export function buildUNet(cfg: UNetConfig, seed: number): tfl.LayersModel {
  validateConfig(cfg);
  const rng = new Rng(seed);
  const { dims, depth, filters, kernelSize, batchNorm, variant } = cfg;
  const input = tfl.input({ shape: dims === 2 ? [null, null, 1] : [null, null, null, 1], name: 'input' });

  const torchInit = cfg.init === 'torch' ? torchConvInitialisers(() => rng.nextUint32()) : null;
  const fanIn = (x: tfl.SymbolicTensor, side: number): number => side ** dims * (x.shape[x.shape.length - 1] ?? 1);
  const conv = (x: tfl.SymbolicTensor, channels: number, name: string): tfl.SymbolicTensor => {
    const args = {
      filters: channels,
      kernelSize,
      padding: 'same' as const,
      kernelInitializer: torchInit?.kernelInitializer() ?? tfl.initializers.glorotUniform({ seed: rng.nextUint32() }),
      biasInitializer: torchInit?.biasInitializer(fanIn(x, kernelSize)) ?? ('zeros' as const),
      // Batch norm subtracts the per-channel mean right after: a bias there is dead weight (and a costly gradient reduction).
      useBias: !batchNorm,
      name: `${name}_conv`,
    };
    let y = (dims === 2 ? tfl.layers.conv2d(args) : tfl.layers.conv3d(args)).apply(x) as tfl.SymbolicTensor;
    if (batchNorm) {
      const bn = new ChannelBatchNorm({ name: `${name}_bn`, ...(cfg.batchNormEpsilon !== undefined ? { epsilon: cfg.batchNormEpsilon } : {}) });
      y = bn.apply(y) as tfl.SymbolicTensor;
    }
    return tfl.layers.activation({ activation: 'relu', name: `${name}_relu` }).apply(y) as tfl.SymbolicTensor;
  };
  const pool = (x: tfl.SymbolicTensor, name: string): tfl.SymbolicTensor => {
    if (variant === 'n2v2') {
      const layer = blurPoolAlignment(cfg) === 'centred' ? new CentredMaxBlurPool({ dims, name }) : new MaxBlurPool({ dims, name });
      return layer.apply(x) as tfl.SymbolicTensor;
    }
    const args = { poolSize: 2, strides: 2, padding: 'valid' as const, name };
    return (dims === 2 ? tfl.layers.maxPooling2d(args) : tfl.layers.maxPooling3d(args)).apply(x) as tfl.SymbolicTensor;
  };
  const upsample = (x: tfl.SymbolicTensor, name: string): tfl.SymbolicTensor => new NearestUpSampling({ dims, name }).apply(x) as tfl.SymbolicTensor;

  let x: tfl.SymbolicTensor = input;
  const skips: tfl.SymbolicTensor[] = [];
  for (let level = 0; level < depth; level++) {
    for (let i = 0; i < convsPerLevel; i++) x = conv(x, filters * 2 ** level, `down${level}_${i}`);
    skips.push(x);
    x = pool(x, `down${level}_pool`);
  }
  // The width of a level's last conv: the level above's ('halving') or its own ('level').
  const lastWidth = (level: number): number => filters * 2 ** (cfg.widths === 'level' ? level : Math.max(0, level - 1));
  for (let i = 0; i < convsPerLevel - 1; i++) x = conv(x, filters * 2 ** depth, `bottom_${i}`);
  x = conv(x, lastWidth(depth), `bottom_${convsPerLevel - 1}`);
  for (let level = depth - 1; level >= 0; level--) {
    x = upsample(x, `up${level}_upsample`);
    const skipped = variant === 'n2v2' && level === 0;
    if (!skipped) x = tfl.layers.concatenate({ axis: -1, name: `up${level}_concat` }).apply([x, skips[level]]) as tfl.SymbolicTensor;
    for (let i = 0; i < convsPerLevel - 1; i++) x = conv(x, filters * 2 ** level, `up${level}_${i}`);
    x = conv(x, lastWidth(level), `up${level}_${convsPerLevel - 1}`);
  }
  const finalArgs = {
    filters: cfg.outputChannels ?? 1,
    kernelSize: 1,
    padding: 'same' as const,
    activation: 'linear' as const,
    kernelInitializer: torchInit?.kernelInitializer() ?? tfl.initializers.glorotUniform({ seed: rng.nextUint32() }),
    ...(torchInit ? { biasInitializer: torchInit.biasInitializer(fanIn(x, 1)) } : {}),
    name: 'output',
  };
  const output = (dims === 2 ? tfl.layers.conv2d(finalArgs) : tfl.layers.conv3d(finalArgs)).apply(x) as tfl.SymbolicTensor;
  return tfl.model({ inputs: input, outputs: output, name: `unet${dims}d_${variant}_depth${depth}` });
}

/** Input interval [lo, hi] (inclusive) each feature index depends on; null where it depends on nothing. */
type Dependency = [lo: number, hi: number] | null;

function union(a: Dependency, b: Dependency): Dependency {
  if (a === null) return b;
  if (b === null) return a;
  return [Math.min(a[0], b[0]), Math.max(a[1], b[1])];
}

/**
 * Receptive field along one axis, traced exactly through the same layer sequence as buildUNet:
 * every feature map is an array of input intervals over a 1D line long enough that its centre is
 * free of border effects. Pooling windows and the blur's 'same' padding make the field depend on the
 * output position modulo 2^depth, so the extents are maxima over those phases.
 */
function traceReceptiveField(cfg: UNetConfig): { before: number; after: number } {
  const { depth, kernelSize, variant } = cfg;
  const sizeMultiple = 2 ** depth;
  const halfKernel = (kernelSize - 1) / 2;
  // Each level adds at most (4 convs + pooling + upsampling) * 2^level per side: 2^depth * (6 halfKernel + 8)
  // bounds the radius, so a line of twice that plus margin has a border-free centre.
  const length = sizeMultiple * (2 * (6 * halfKernel + 8) + 4);
  const conv = (prev: Dependency[]): Dependency[] =>
    prev.map((_, j) => {
      let dep: Dependency = null;
      for (let t = -halfKernel; t <= halfKernel; t++) if (j + t >= 0 && j + t < prev.length) dep = union(dep, prev[j + t]);
      return dep;
    });
  const pool = (prev: Dependency[]): Dependency[] => {
    const half = prev.length / 2;
    if (variant === 'n2v') return Array.from({ length: half }, (_, j) => union(prev[2 * j], prev[2 * j + 1]));
    const maxed = prev.map((dep, i) => (i + 1 < prev.length ? union(dep, prev[i + 1]) : dep));
    // The blur's three taps start at 2j ('trailing') or 2j - 1 ('centred').
    const first = blurPoolAlignment(cfg) === 'centred' ? -1 : 0;
    return Array.from({ length: half }, (_, j) => {
      let dep: Dependency = null;
      for (let t = first; t < first + 3; t++) if (2 * j + t >= 0 && 2 * j + t < maxed.length) dep = union(dep, maxed[2 * j + t]);
      return dep;
    });
  };
  const upsample = (prev: Dependency[]): Dependency[] => Array.from({ length: 2 * prev.length }, (_, i) => prev[i >> 1]);

  let x: Dependency[] = Array.from({ length }, (_, i) => [i, i]);
  const skips: Dependency[][] = [];
  for (let level = 0; level < depth; level++) {
    for (let i = 0; i < convsPerLevel; i++) x = conv(x);
    skips.push(x);
    x = pool(x);
  }
  for (let i = 0; i < convsPerLevel; i++) x = conv(x);
  for (let level = depth - 1; level >= 0; level--) {
    x = upsample(x);
    if (!(variant === 'n2v2' && level === 0)) {
      const skip = skips[level];
      x = x.map((dep, i) => union(dep, skip[i]));
    }
    for (let i = 0; i < convsPerLevel; i++) x = conv(x);
  }
  let before = 0;
  let after = 0;
  const centre = Math.floor(length / 2 / sizeMultiple) * sizeMultiple;
  for (let p = centre; p < centre + sizeMultiple; p++) {
    const dep = x[p];
    if (dep === null) throw new Error('receptive field trace: output depends on no input');
    before = Math.max(before, p - dep[0]);
    after = Math.max(after, dep[1] - p);
  }
  return { before, after };
}

export function unetGeometry(cfg: UNetConfig): UNetGeometry {
  validateConfig(cfg);
  const { before, after } = traceReceptiveField(cfg);
  return { sizeMultiple: 2 ** cfg.depth, receptiveRadius: Math.max(before, after), receptiveBefore: before, receptiveAfter: after };
}

/** Re-exported so callers that load a saved model can make sure the custom layers are registered. */
export { CentredMaxBlurPool, ChannelBatchNorm, MaxBlurPool, NearestUpSampling };
