/**
 * Laine et al. 2019 ("High-quality self-supervised deep image denoising", seed 001): a blind-spot
 * network by architecture, 2D (NHWC) and 3D (NDHWC).
 *
 * One branch network (the Noise2Noise U-Net of the paper, leaky ReLU 0.1, no batch norm) is made
 * causal along its first spatial axis: every 3x3 convolution is offset one row down (one zero row
 * padded on top, 'same' convolution, the last row cropped: output row r sees rows r-2..r), and every
 * 2x2 max pool is preceded by a one-row shift down, so an output row depends only on input rows at
 * or above it; a last shift by one row excludes the row itself (a half-plane strictly above the
 * pixel). The same branch (shared weights) runs on the input rotated so that each axis
 * direction becomes "up" (2D: 0/90/180/270 degrees; 3D: the six directions +-z, +-y, +-x), the
 * outputs are rotated back and concatenated, and 1x1 convolutions merge them. The union of the
 * half-planes is everything but the pixel itself, so every pixel can be in the loss (no masking).
 *
 * Output: 1 channel (the blind-spot estimate) or 2 (mean and log variance of a Gaussian prior,
 * models/bayes.ts: train with gaussianPriorLoss on an all-ones mask, denoise with the posterior).
 */
import * as tfl from '@tensorflow/tfjs-layers';
import { Rng } from '../core/rng.js';
import { CropBottom, Orient, PadTop, ShiftDown, type SpatialOrientation } from './blindspotLayers.js';
import { NearestUpSampling } from './layers.js';
import type { UNetGeometry } from './unet.js';

export interface Laine19Config {
  dims: 2 | 3;
  /** Number of 2x2 poolings of the branch U-Net (5 in the paper); every spatial size must be a multiple of 2^depth. */
  depth: number;
  /** Encoder filters (48 in the paper); the decoder and the merge use twice as many. */
  filters: number;
  /** 1 (the denoised value) or 2 (mean and log variance of a Gaussian prior, models/bayes.ts); default 1. */
  outputChannels?: number;
}

/** The paper's network in 2D (depth 5, 48 filters); in 3D a lighter one (depth 3, 32 filters: six branches of 3D convolutions). */
export const defaultLaine19Config = (dims: 2 | 3): Laine19Config => (dims === 2 ? { dims, depth: 5, filters: 48 } : { dims, depth: 3, filters: 32 });

/**
 * The rotations that point each branch: the branch's field lies at smaller index along its first
 * spatial axis, so orientation i gives the field on one side of the pixel. All are proper rotations
 * (an odd permutation comes with an odd number of flips).
 */
export function laine19Orientations(dims: 2 | 3): { direction: string; orientation: SpatialOrientation }[] {
  if (dims === 2) {
    return [
      { direction: 'above', orientation: { permutation: [0, 1], flips: [] } },
      { direction: 'right', orientation: { permutation: [1, 0], flips: [0] } },
      { direction: 'below', orientation: { permutation: [0, 1], flips: [0, 1] } },
      { direction: 'left', orientation: { permutation: [1, 0], flips: [1] } },
    ];
  }
  return [
    { direction: 'zminus', orientation: { permutation: [0, 1, 2], flips: [] } },
    { direction: 'zplus', orientation: { permutation: [0, 1, 2], flips: [0, 1] } },
    { direction: 'yminus', orientation: { permutation: [1, 0, 2], flips: [1] } },
    { direction: 'yplus', orientation: { permutation: [1, 0, 2], flips: [0] } },
    { direction: 'xminus', orientation: { permutation: [2, 1, 0], flips: [1] } },
    { direction: 'xplus', orientation: { permutation: [2, 1, 0], flips: [0] } },
  ];
}

function validateConfig(cfg: Laine19Config): void {
  if (cfg.dims !== 2 && cfg.dims !== 3) throw new RangeError(`laine19 dims must be 2 or 3, got ${String(cfg.dims)}`);
  if (!Number.isInteger(cfg.depth) || cfg.depth < 1) throw new RangeError(`laine19 depth must be an integer >= 1, got ${cfg.depth}`);
  if (!Number.isInteger(cfg.filters) || cfg.filters < 1) throw new RangeError(`laine19 filters must be a positive integer, got ${cfg.filters}`);
  if (cfg.outputChannels !== undefined && cfg.outputChannels !== 1 && cfg.outputChannels !== 2) {
    throw new RangeError(`laine19 outputChannels must be 1 or 2, got ${cfg.outputChannels}`);
  }
}

/** The branch's operations, interpreted once as layers (buildLaine19) and once as a receptive-field trace (laine19Geometry). */
interface BranchOps<T> {
  /** 3x3 conv offset one row down (pad top, 'same' conv, crop bottom) + leaky ReLU. */
  conv(x: T, filters: number, name: string): T;
  /** Shift one row down, then 2x2 max pool. */
  pool(x: T, name: string): T;
  upsample(x: T, name: string): T;
  concat(a: T, b: T, name: string): T;
  /** The last one-row shift that takes the row itself out of the field. */
  finalShift(x: T, name: string): T;
}

/**
 * The Noise2Noise U-Net of the paper as a causal branch: enc0 (two convs), pool, then per level one
 * conv and a pool, one conv at the bottom; per decoder level: upsample, concatenate the skip (the
 * input at the top level, the pooled encoder output below), two convs of 2 * filters.
 */
function branch<T>(input: T, cfg: Laine19Config, ops: BranchOps<T>): T {
  const { depth, filters } = cfg;
  const skips: T[] = [input];
  let h = ops.conv(input, filters, 'enc0_a');
  h = ops.conv(h, filters, 'enc0_b');
  h = ops.pool(h, 'pool0');
  for (let level = 1; level < depth; level++) {
    skips.push(h);
    h = ops.conv(h, filters, `enc${level}`);
    h = ops.pool(h, `pool${level}`);
  }
  h = ops.conv(h, filters, 'bottom');
  for (let level = depth - 1; level >= 0; level--) {
    h = ops.upsample(h, `dec${level}_upsample`);
    h = ops.concat(h, skips[level], `dec${level}_concat`);
    h = ops.conv(h, 2 * filters, `dec${level}_a`);
    h = ops.conv(h, 2 * filters, `dec${level}_b`);
  }
  return ops.finalShift(h, 'shift_out');
}

/**
 * Builds the network. Input [batch, (Z,) Y, X, 1] with every spatial size a multiple of
 * 2^depth (laine19Geometry); output the same size with outputChannels channels. Layer names:
 * branch layers `branch_*` (shared by all orientations), `orient_<direction>` /
 * `unorient_<direction>` (none for the unrotated branch), merge `merge_a`, `merge_b`, `output`. The same seed gives the same weights.
 */
export function buildLaine19(cfg: Laine19Config, seed: number): tfl.LayersModel {
  validateConfig(cfg);
  const rng = new Rng(seed);
  const { dims, filters } = cfg;
  const input = tfl.input({ shape: dims === 2 ? [null, null, 1] : [null, null, null, 1], name: 'input' });

  // Layers are made on first use and reused by the other orientations: that is the weight sharing.
  const shared = new Map<string, tfl.layers.Layer>();
  const layer = (name: string, make: () => tfl.layers.Layer): tfl.layers.Layer => {
    let l = shared.get(name);
    if (l === undefined) {
      l = make();
      shared.set(name, l);
    }
    return l;
  };
  const apply = (l: tfl.layers.Layer, x: tfl.SymbolicTensor | tfl.SymbolicTensor[]): tfl.SymbolicTensor => l.apply(x) as tfl.SymbolicTensor;
  const convLayer = (channels: number, kernelSize: number, name: string, initialiserSeed: number): tfl.layers.Layer => {
    const args = {
      filters: channels,
      kernelSize,
      padding: 'same' as const,
      activation: 'linear' as const,
      kernelInitializer: name === 'output' ? tfl.initializers.glorotUniform({ seed: initialiserSeed }) : tfl.initializers.heNormal({ seed: initialiserSeed }),
      biasInitializer: 'zeros' as const,
      name,
    };
    return dims === 2 ? tfl.layers.conv2d(args) : tfl.layers.conv3d(args);
  };
  const leaky = (name: string): tfl.layers.Layer => tfl.layers.leakyReLU({ alpha: 0.1, name });

  const ops: BranchOps<tfl.SymbolicTensor> = {
    conv: (x, channels, name) => {
      // Pad-conv-crop rather than conv-then-shift: the top output row still sees the top input row.
      const padded = apply(layer(`branch_${name}_pad`, () => new PadTop({ rows: 1, name: `branch_${name}_pad` })), x);
      const convolved = apply(layer(`branch_${name}_conv`, () => convLayer(channels, 3, `branch_${name}_conv`, rng.nextUint32())), padded);
      const cropped = apply(layer(`branch_${name}_crop`, () => new CropBottom({ rows: 1, name: `branch_${name}_crop` })), convolved);
      return apply(layer(`branch_${name}_lrelu`, () => leaky(`branch_${name}_lrelu`)), cropped);
    },
    pool: (x, name) => {
      const shifted = apply(layer(`branch_${name}_shift`, () => new ShiftDown({ shift: 1, name: `branch_${name}_shift` })), x);
      const poolArgs = { poolSize: 2, strides: 2, padding: 'valid' as const, name: `branch_${name}` };
      return apply(layer(`branch_${name}`, () => (dims === 2 ? tfl.layers.maxPooling2d(poolArgs) : tfl.layers.maxPooling3d(poolArgs))), shifted);
    },
    upsample: (x, name) => apply(layer(`branch_${name}`, () => new NearestUpSampling({ dims, name: `branch_${name}` })), x),
    concat: (a, b, name) => apply(layer(`branch_${name}`, () => tfl.layers.concatenate({ axis: -1, name: `branch_${name}` })), [a, b]),
    finalShift: (x, name) => apply(layer(`branch_${name}`, () => new ShiftDown({ shift: 1, name: `branch_${name}` })), x),
  };

  const branchOutputs = laine19Orientations(dims).map(({ direction, orientation }) => {
    const identity = orientation.flips.length === 0 && orientation.permutation.every((v, i) => v === i);
    const oriented = identity ? input : apply(new Orient({ dims, ...orientation, inverse: false, name: `orient_${direction}` }), input);
    const features = branch(oriented, cfg, ops);
    return identity ? features : apply(new Orient({ dims, ...orientation, inverse: true, name: `unorient_${direction}` }), features);
  });
  const merged = apply(tfl.layers.concatenate({ axis: -1, name: 'merge_concat' }), branchOutputs);
  const a = apply(leaky('merge_a_lrelu'), apply(convLayer(branchOutputs.length * 2 * filters, 1, 'merge_a', rng.nextUint32()), merged));
  const b = apply(leaky('merge_b_lrelu'), apply(convLayer(2 * filters, 1, 'merge_b', rng.nextUint32()), a));
  const output = apply(convLayer(cfg.outputChannels ?? 1, 1, 'output', rng.nextUint32()), b);
  return tfl.model({ inputs: input, outputs: output, name: `laine19_${dims}d_depth${cfg.depth}` });
}

/** Input interval [lo, hi] (inclusive) a feature index depends on; null where it depends on nothing. */
type Dependency = [lo: number, hi: number] | null;

function union(a: Dependency, b: Dependency): Dependency {
  if (a === null) return b;
  if (b === null) return a;
  return [Math.min(a[0], b[0]), Math.max(a[1], b[1])];
}

function unionRange(prev: Dependency[], from: number, to: number): Dependency {
  let dep: Dependency = null;
  for (let t = from; t <= to; t++) if (t >= 0 && t < prev.length) dep = union(dep, prev[t]);
  return dep;
}

/** The branch traced along its causal axis (shifts apply) or a lateral axis (no shifts), on a line of `length`. */
function traceOps(causal: boolean): BranchOps<Dependency[]> {
  return {
    conv: (x) => x.map((_, j) => (causal ? unionRange(x, j - 2, j) : unionRange(x, j - 1, j + 1))),
    pool: (x) => Array.from({ length: x.length / 2 }, (_, j) => (causal ? unionRange(x, 2 * j - 1, 2 * j) : unionRange(x, 2 * j, 2 * j + 1))),
    upsample: (x) => Array.from({ length: 2 * x.length }, (_, i) => x[i >> 1]),
    concat: (a, b) => a.map((dep, i) => union(dep, b[i])),
    finalShift: (x) => (causal ? x.map((_, j) => (j >= 1 ? x[j - 1] : null)) : x),
  };
}

/**
 * Every spatial size must be a multiple of 2^depth. The receptive field (traced exactly through the
 * branch, max over the 2^depth pooling phases) reaches `receptiveRadius` pixels on each side of the
 * pixel along every axis: the rotated branches make it symmetric.
 */
export function laine19Geometry(cfg: Laine19Config): UNetGeometry {
  validateConfig(cfg);
  const sizeMultiple = 2 ** cfg.depth;
  for (let length = sizeMultiple * 64; ; length *= 2) {
    const centre = Math.floor(length / 2 / sizeMultiple) * sizeMultiple;
    let reach = 0;
    let touchesEnd = false;
    for (const causal of [true, false]) {
      const line: Dependency[] = Array.from({ length }, (_, i) => [i, i]);
      const out = branch(line, cfg, traceOps(causal));
      for (let p = centre; p < centre + sizeMultiple; p++) {
        const dep = out[p];
        if (dep === null) throw new Error('laine19 receptive field trace: an output depends on no input');
        if (causal && dep[1] >= p) throw new Error(`laine19 receptive field trace: the causal branch reaches its own row (${dep[1]} >= ${p})`);
        if (dep[0] === 0 || dep[1] === length - 1) touchesEnd = true;
        reach = Math.max(reach, p - dep[0], causal ? 0 : dep[1] - p);
      }
    }
    if (!touchesEnd) return { sizeMultiple, receptiveRadius: reach, receptiveBefore: reach, receptiveAfter: reach };
  }
}

/** Re-exported so callers that load a saved model can make sure the custom layers are registered. */
export { CropBottom, NearestUpSampling, Orient, PadTop, ShiftDown };
