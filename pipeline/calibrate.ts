/**
 * Self-supervised calibration of classical denoisers (Noise2Self, Batson & Royer 2019, seed 003):
 * choose a filter's parameter with no clean image by the J-invariant loss.
 *
 * The pixels are split into the k^dims phases of a k-grid (models/gridMask.ts). For each phase J
 * the phase's pixels are replaced by their donut mean (which reads only other phases), the
 * denoiser runs on that input, and its output is read on J only: the result on J does not depend
 * on the noisy values on J, so for noise independent across pixels
 *   E ||f_J(x) - x||^2 = E ||f_J(x) - s||^2 + E ||x - s||^2,
 * i.e. the loss against the noisy image is the loss against the unknown clean image plus a
 * constant (the noise variance). Averaged over all phases (every pixel scored exactly once), its
 * minimum over the candidates is the self-supervised choice.
 *
 * Denoisers (plain TypeScript on Float32Array, 2D [Y, X] and 3D [Z, Y, X], isotropic in pixel
 * units; median and Gaussian windows are cut at the image border, non-local means pads by reflection):
 * - median: window of side 2r + 1 (parameter: radius r, integer >= 1);
 * - gaussian: normalised Gaussian of standard deviation sigma pixels, truncated at 3 sigma
 *   (parameter: sigma > 0);
 * - nlm: non-local means (Buades, Coll & Morel 2005) with patch radius p and search radius s
 *   (options), weights exp(-d2 / h^2) where d2 is the mean squared difference of the two patches
 *   and the centre's own weight is the largest weight of its neighbours (parameter: filter
 *   strength h, in image units).
 * Median and non-local means are evaluated only at the phase's pixels during calibration, so one
 * candidate costs about one full-image filtering; the Gaussian is separable and filters the
 * whole masked image per phase.
 */
import { InputError } from '../core/errors.js';
import type { Shape, Volume } from '../core/volume.js';
import { reflectIndex, voxelCount } from '../core/volume.js';
import { medianInPlace } from '../core/select.js';
import { donutMeanAt, gridMaskPatch, gridPhaseCount } from '../models/gridMask.js';

export const CLASSICAL_DENOISERS = ['median', 'gaussian', 'nlm'] as const;
export type ClassicalDenoiser = (typeof CLASSICAL_DENOISERS)[number];

/** Non-local means geometry in pixels; defaults: patch radius 1, search radius 5 (2D) or 2 (3D). */
export interface NlmGeometry {
  patchRadius?: number;
  searchRadius?: number;
}

/**
 * A denoiser evaluated at some pixels: returns the filtered value of `input` at each of `indices`
 * (C-order indices into `input`), in the same order.
 */
export type DenoiseAt = (input: Float32Array, shape: Shape, indices: Int32Array) => Float32Array;

export interface CalibrateOptions extends NlmGeometry {
  denoiser: ClassicalDenoiser;
  /** Parameter values to try (radius, sigma or h); default: defaultCandidates(). */
  candidates?: readonly number[];
  /** Grid side k (k^dims phases); default 4 in 2D, 3 in 3D. */
  grid?: number;
  /** Name of the image, for error messages. */
  name?: string;
}

export interface CandidateLoss {
  parameter: number;
  /** J-invariant loss: mean over all pixels of (f_J(x) - x)^2, in squared image units. */
  loss: number;
}

export interface CalibrationResult {
  denoiser: ClassicalDenoiser;
  /** The candidate with the smallest J-invariant loss. */
  best: number;
  /**
   * Set when `best` is the smallest or largest parameter searched, so the optimum may lie beyond:
   * after the default range was widened MAX_WIDENINGS times, or with explicit candidates.
   */
  edge?: 'lower' | 'upper';
  losses: CandidateLoss[];
  grid: number;
  phases: number;
  /** Non-local means geometry used (nlm only). */
  nlm?: Required<NlmGeometry>;
  /** Robust noise standard deviation estimate (image units), used to scale default nlm candidates. */
  noiseSigmaEstimate: number;
  seconds: number;
}

function dimsOf(shape: Shape): [nz: number, ny: number, nx: number] {
  return shape.length === 3 ? [shape[0], shape[1], shape[2]] : [1, shape[0], shape[1]];
}

/** Checks an image before calibrating or filtering it; problems are InputErrors naming it. */
export function checkCalibrationInput(volume: Volume, name: string): void {
  const shape = volume.shape as readonly number[];
  if (shape.length !== 2 && shape.length !== 3) throw new InputError(name, `must be a 2D [Y, X] or 3D [Z, Y, X] image, got shape [${shape.join(', ')}]`);
  if (voxelCount(shape) !== volume.data.length) throw new InputError(name, `shape [${shape.join(', ')}] does not match its ${volume.data.length} values`);
  const [, ny, nx] = dimsOf(volume.shape);
  if (ny < 4 || nx < 4) throw new InputError(name, `is too small to calibrate a denoiser on (${shape.join('x')}; needs at least 4x4 pixels per slice)`);
  for (let i = 0; i < volume.data.length; i++) {
    if (!Number.isFinite(volume.data[i])) throw new InputError(name, `has a non-finite value (${volume.data[i]}) at index ${i}; clean it first`);
  }
}

/**
 * Robust noise standard deviation for white noise: the median absolute deviation of the residual
 * to the donut mean, divided by sqrt(1 + 1/n) for the n neighbours averaged (8 in 2D, 26 in 3D).
 * Edges inflate it a little; it only scales the default nlm candidates.
 */
export function estimateNoiseSigma(volume: Volume): number {
  const n = volume.data.length;
  const stride = Math.max(1, Math.floor(n / 200_000));
  const residuals: number[] = [];
  for (let i = 0; i < n; i += stride) residuals.push(volume.data[i] - donutMeanAt(volume.data, volume.shape, i));
  const median = quantileOf(residuals, 0.5);
  const deviations = residuals.map((r) => Math.abs(r - median));
  const neighbours = volume.shape.length === 3 ? 26 : 8;
  return quantileOf(deviations, 0.5) / 0.6745 / Math.sqrt(1 + 1 / neighbours);
}

function quantileOf(values: number[], q: number): number {
  const sorted = Float64Array.from(values).sort();
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

/**
 * Default candidates: median radii 1..4, Gaussian sigmas 0.5..3 px, nlm h as 0.4..1.6 x the noise
 * estimate. calibrateDenoiser widens them while the minimum sits at an end.
 */
export function defaultCandidates(denoiser: ClassicalDenoiser, noiseSigmaEstimate: number): number[] {
  switch (denoiser) {
    case 'median':
      return [1, 2, 3, 4];
    case 'gaussian':
      return [0.5, 0.75, 1, 1.25, 1.5, 2, 2.5, 3];
    case 'nlm': {
      const scale = noiseSigmaEstimate > 0 ? noiseSigmaEstimate : 1;
      return [0.4, 0.6, 0.8, 1, 1.2, 1.6].map((f) => +(f * scale).toPrecision(4));
    }
  }
}

function checkParameter(denoiser: ClassicalDenoiser, parameter: number): void {
  if (denoiser === 'median' && !(Number.isInteger(parameter) && parameter >= 1)) throw new RangeError(`median radius must be an integer >= 1, got ${parameter}`);
  if (denoiser !== 'median' && !(parameter > 0 && Number.isFinite(parameter))) throw new RangeError(`${denoiser === 'gaussian' ? 'Gaussian sigma' : 'nlm filter strength h'} must be a positive number, got ${parameter}`);
}

function nlmGeometry(shape: Shape, geometry: NlmGeometry): Required<NlmGeometry> {
  const patchRadius = geometry.patchRadius ?? 1;
  const searchRadius = geometry.searchRadius ?? (shape.length === 3 ? 2 : 5);
  if (!Number.isInteger(patchRadius) || patchRadius < 0) throw new RangeError(`nlm patch radius must be an integer >= 0, got ${patchRadius}`);
  if (!Number.isInteger(searchRadius) || searchRadius < 1) throw new RangeError(`nlm search radius must be an integer >= 1, got ${searchRadius}`);
  return { patchRadius, searchRadius };
}

/** The denoiser with one parameter value, as a function evaluated at chosen pixels. */
export function classicalDenoiserAt(denoiser: ClassicalDenoiser, parameter: number, geometry: NlmGeometry = {}): DenoiseAt {
  checkParameter(denoiser, parameter);
  switch (denoiser) {
    case 'median':
      return (input, shape, indices) => medianAt(input, shape, indices, parameter);
    case 'gaussian':
      return (input, shape, indices) => {
        const filtered = gaussianFilter(input, shape, parameter);
        return Float32Array.from(indices, (i) => filtered[i]);
      };
    case 'nlm':
      return (input, shape, indices) => nlmAt(input, shape, indices, parameter, nlmGeometry(shape, geometry));
  }
}

/** What applyClassicalDenoiser returns: the J-invariant filter the loss scored, or the plain filter. */
export type ClassicalOutput = 'invariant' | 'plain';

export interface ApplyOptions extends NlmGeometry {
  /**
   * 'invariant' (default): each pixel filtered with its grid phase donut-interpolated, the exact
   * function whose loss calibrateDenoiser minimised (its loss is the clean-image error plus the
   * noise variance, so the calibrated choice is right for it; scikit-image's calibrate_denoiser
   * returns this version too). 'plain': the ordinary filter with the same parameter, which keeps
   * each pixel's own noisy value in its average and may prefer a different parameter.
   */
  output?: ClassicalOutput;
  /** Grid side for the invariant output; default 4 in 2D, 3 in 3D (as calibrateDenoiser). */
  grid?: number;
}

/** The denoiser with one parameter applied to the whole image. */
export function applyClassicalDenoiser(volume: Volume, denoiser: ClassicalDenoiser, parameter: number, opts: ApplyOptions = {}): Volume {
  checkParameter(denoiser, parameter);
  let data: Float32Array;
  if ((opts.output ?? 'invariant') === 'invariant') {
    data = jInvariantLoss(volume, classicalDenoiserAt(denoiser, parameter, opts), opts.grid ?? defaultGrid(volume.shape)).output;
  } else if (denoiser === 'gaussian') {
    data = gaussianFilter(volume.data, volume.shape, parameter);
  } else {
    data = classicalDenoiserAt(denoiser, parameter, opts)(volume.data, volume.shape, Int32Array.from({ length: volume.data.length }, (_, i) => i));
  }
  return { data, shape: volume.shape, sampleType: 'float32' };
}

export function defaultGrid(shape: Shape): number {
  return shape.length === 3 ? 3 : 4;
}

/** One grid phase of a J-invariant evaluation: the donut-interpolated input and the masked pixels. */
export interface JInvariantPhase {
  readonly input: Float32Array;
  /** C-order indices of the phase's pixels (the ones to read from the denoiser's output). */
  readonly indices: Int32Array;
}

/** The k^dims grid phases of `volume` that hold pixels, each with its masked input. */
export function* jInvariantPhases(volume: Volume, grid: number): Generator<JInvariantPhase> {
  const phases = gridPhaseCount(grid, volume.shape.length as 2 | 3);
  for (let phase = 0; phase < phases; phase++) {
    const { input, mask, count } = gridMaskPatch(volume.data, volume.shape, grid, phase);
    if (count === 0) continue; // a phase beyond a tiny image's extent
    const indices = new Int32Array(count);
    for (let i = 0, n = 0; i < mask.length; i++) if (mask[i] !== 0) indices[n++] = i;
    yield { input, indices };
  }
}

/** Accumulates the J-invariant output and squared error over phases (each pixel scored once). */
class JInvariantScore {
  readonly output: Float32Array;
  private sumSquares = 0;
  constructor(private readonly noisy: Float32Array) {
    this.output = new Float32Array(noisy.length);
  }
  add(indices: Int32Array, values: Float32Array): void {
    for (let n = 0; n < indices.length; n++) {
      const i = indices[n];
      this.output[i] = values[n];
      const d = values[n] - this.noisy[i];
      this.sumSquares += d * d;
    }
  }
  result(): { loss: number; output: Float32Array } {
    return { loss: this.sumSquares / this.noisy.length, output: this.output };
  }
}

/**
 * The J-invariant loss of `denoise` on `volume`: for each of the k^dims grid phases, the phase's
 * pixels are donut-interpolated, `denoise` is read on them and compared with the noisy values;
 * the mean over all pixels (each scored once). Also returns the J-invariant output (each pixel
 * from the phase that masked it).
 */
export function jInvariantLoss(volume: Volume, denoise: DenoiseAt, grid: number): { loss: number; output: Float32Array } {
  const score = new JInvariantScore(volume.data);
  for (const { input, indices } of jInvariantPhases(volume, grid)) score.add(indices, denoise(input, volume.shape, indices));
  return score.result();
}

/** jInvariantLoss for a denoiser that answers asynchronously (a network run over the whole image). */
export async function jInvariantLossAsync(
  volume: Volume,
  denoise: (input: Float32Array, shape: Shape, indices: Int32Array) => Promise<Float32Array>,
  grid: number,
): Promise<{ loss: number; output: Float32Array }> {
  const score = new JInvariantScore(volume.data);
  for (const { input, indices } of jInvariantPhases(volume, grid)) score.add(indices, await denoise(input, volume.shape, indices));
  return score.result();
}

/** Picks the denoiser's parameter by the J-invariant loss (no clean image needed). */
export function calibrateDenoiser(volume: Volume, opts: CalibrateOptions): CalibrationResult {
  const t0 = performance.now();
  const name = opts.name ?? 'image';
  checkCalibrationInput(volume, name);
  if (!CLASSICAL_DENOISERS.includes(opts.denoiser)) throw new RangeError(`denoiser must be one of ${CLASSICAL_DENOISERS.join(', ')}, got '${opts.denoiser}'`);
  const dims = volume.shape.length as 2 | 3;
  const grid = opts.grid ?? defaultGrid(volume.shape);
  if (!Number.isInteger(grid) || grid < 2) throw new RangeError(`grid side must be an integer >= 2, got ${grid}`);
  const noiseSigmaEstimate = estimateNoiseSigma(volume);
  const candidates = opts.candidates ?? defaultCandidates(opts.denoiser, noiseSigmaEstimate);
  if (candidates.length === 0) throw new RangeError('calibration needs at least one candidate parameter');
  for (const c of candidates) checkParameter(opts.denoiser, c);
  const geometry = opts.denoiser === 'nlm' ? nlmGeometry(volume.shape, opts) : undefined;
  const lossAt = (parameter: number): CandidateLoss => ({ parameter, loss: jInvariantLoss(volume, classicalDenoiserAt(opts.denoiser, parameter, geometry), grid).loss });
  const losses = candidates.map(lossAt);
  // Default candidates scale from a noise estimate that reads low on spatially correlated noise, so
  // the optimum can lie outside them: widen the default range until the minimum is interior.
  if (opts.candidates === undefined) widenUntilInterior(losses, opts.denoiser, lossAt);
  const best = argminLoss(losses);
  return {
    denoiser: opts.denoiser,
    best: best.parameter,
    ...edgeOf(losses, best, opts.denoiser),
    losses,
    grid,
    phases: gridPhaseCount(grid, dims),
    ...(geometry ? { nlm: geometry } : {}),
    noiseSigmaEstimate,
    seconds: (performance.now() - t0) / 1000,
  };
}

/** How many steps the default range may grow past either end before the search gives up. */
export const MAX_WIDENINGS = 8;
/** Geometric step of a widening for continuous parameters (Gaussian sigma, nlm h). */
const WIDENING_FACTOR = 1.5;
/** Smallest continuous parameter tried: below it every filter is the identity to float precision. */
const MIN_CONTINUOUS_PARAMETER = 0.05;

function argminLoss(losses: readonly CandidateLoss[]): CandidateLoss {
  let best = losses[0];
  for (const l of losses) if (l.loss < best.loss) best = l;
  return best;
}

/** The next parameter past the range's end, or undefined where the parameter cannot go further. */
function beyond(denoiser: ClassicalDenoiser, end: number, direction: 'lower' | 'upper'): number | undefined {
  if (denoiser === 'median') return direction === 'upper' ? end + 1 : end > 1 ? end - 1 : undefined;
  const next = direction === 'upper' ? end * WIDENING_FACTOR : end / WIDENING_FACTOR;
  return next < MIN_CONTINUOUS_PARAMETER ? undefined : +next.toPrecision(4);
}

/** Adds candidates past whichever end holds the minimum until a larger loss lies beyond it (in place, kept sorted). */
function widenUntilInterior(losses: CandidateLoss[], denoiser: ClassicalDenoiser, lossAt: (parameter: number) => CandidateLoss): void {
  losses.sort((a, b) => a.parameter - b.parameter);
  for (let step = 0; step < MAX_WIDENINGS; step++) {
    const best = argminLoss(losses);
    const direction = best === losses[losses.length - 1] ? 'upper' : best === losses[0] ? 'lower' : undefined;
    if (direction === undefined) return;
    const next = beyond(denoiser, best.parameter, direction);
    if (next === undefined) return;
    const added = lossAt(next);
    if (direction === 'upper') losses.push(added);
    else losses.unshift(added);
  }
}

/**
 * Whether the chosen parameter sits at an end of the searched range, where the true optimum may lie
 * beyond it (a median radius of 1 is the smallest there is, so it is no edge).
 */
function edgeOf(losses: readonly CandidateLoss[], best: CandidateLoss, denoiser: ClassicalDenoiser): { edge?: 'lower' | 'upper' } {
  if (losses.length < 2) return {};
  const parameters = losses.map((l) => l.parameter);
  if (best.parameter === Math.max(...parameters)) return { edge: 'upper' };
  if (best.parameter === Math.min(...parameters) && beyond(denoiser, best.parameter, 'lower') !== undefined) return { edge: 'lower' };
  return {};
}

// ---------------------------------------------------------------------------------------------
// Filters

function medianAt(input: Float32Array, shape: Shape, indices: Int32Array, radius: number): Float32Array {
  const [nz, ny, nx] = dimsOf(shape);
  const rz = shape.length === 3 ? radius : 0;
  const window = new Float32Array((2 * rz + 1) * (2 * radius + 1) ** 2);
  const out = new Float32Array(indices.length);
  const plane = ny * nx;
  for (let n = 0; n < indices.length; n++) {
    const i = indices[n];
    const z = Math.floor(i / plane);
    const y = Math.floor(i / nx) % ny;
    const x = i % nx;
    const z0 = Math.max(0, z - rz), z1 = Math.min(nz - 1, z + rz);
    const y0 = Math.max(0, y - radius), y1 = Math.min(ny - 1, y + radius);
    const x0 = Math.max(0, x - radius), x1 = Math.min(nx - 1, x + radius);
    let count = 0;
    for (let zz = z0; zz <= z1; zz++) {
      for (let yy = y0; yy <= y1; yy++) {
        const row = zz * plane + yy * nx;
        for (let xx = x0; xx <= x1; xx++) window[count++] = input[row + xx];
      }
    }
    out[n] = medianInPlace(window, count);
  }
  return out;
}


/** Separable Gaussian over every axis (Z too in 3D), truncated at 3 sigma, renormalised at the border. */
export function gaussianFilter(input: Float32Array, shape: Shape, sigma: number): Float32Array {
  const [nz, ny, nx] = dimsOf(shape);
  const radius = Math.max(1, Math.ceil(3 * sigma));
  const taps = new Float64Array(2 * radius + 1);
  for (let k = -radius; k <= radius; k++) taps[k + radius] = Math.exp(-(k * k) / (2 * sigma * sigma));
  let current = Float32Array.from(input);
  const axes: Array<{ length: number; stride: number }> = [
    { length: nx, stride: 1 },
    { length: ny, stride: nx },
  ];
  if (shape.length === 3) axes.push({ length: nz, stride: ny * nx });
  for (const { length, stride } of axes) {
    const next = new Float32Array(current.length);
    for (let start = 0; start < current.length; start++) {
      // `start` runs over every pixel; the line along this axis is handled from its first pixel.
      if (Math.floor(start / stride) % length !== 0) continue;
      for (let p = 0; p < length; p++) {
        let sum = 0;
        let weight = 0;
        const k0 = Math.max(-radius, -p), k1 = Math.min(radius, length - 1 - p);
        for (let k = k0; k <= k1; k++) {
          const w = taps[k + radius];
          sum += w * current[start + (p + k) * stride];
          weight += w;
        }
        next[start + p * stride] = sum / weight;
      }
    }
    current = next;
  }
  return current;
}

/**
 * Non-local means at the chosen pixels. The image is padded by reflection (patch + search radius
 * on every spatial axis) so the inner loops run over precomputed flat offsets with no bounds
 * checks; every patch then has the same size.
 */
function nlmAt(input: Float32Array, shape: Shape, indices: Int32Array, h: number, geometry: Required<NlmGeometry>): Float32Array {
  const [nz, ny, nx] = dimsOf(shape);
  const is3d = shape.length === 3;
  const p = geometry.patchRadius;
  const s = geometry.searchRadius;
  const margin = p + s;
  const mz = is3d ? margin : 0;
  const pnz = nz + 2 * mz, pny = ny + 2 * margin, pnx = nx + 2 * margin;
  const pplane = pny * pnx;
  const padded = new Float32Array(pnz * pplane);
  const plane = ny * nx;
  for (let z = 0; z < pnz; z++) {
    const sz = reflectIndex(z - mz, nz);
    for (let y = 0; y < pny; y++) {
      const row = sz * plane + reflectIndex(y - margin, ny) * nx;
      const prow = z * pplane + y * pnx;
      for (let x = 0; x < pnx; x++) padded[prow + x] = input[row + reflectIndex(x - margin, nx)];
    }
  }
  const offsetsWithin = (radius: number, radiusZ: number, skipCentre: boolean): Int32Array => {
    const offsets: number[] = [];
    for (let dz = -radiusZ; dz <= radiusZ; dz++) {
      for (let dy = -radius; dy <= radius; dy++) {
        for (let dx = -radius; dx <= radius; dx++) {
          if (skipCentre && dz === 0 && dy === 0 && dx === 0) continue;
          offsets.push(dz * pplane + dy * pnx + dx);
        }
      }
    }
    return Int32Array.from(offsets);
  };
  const patchOffsets = offsetsWithin(p, is3d ? p : 0, false);
  const searchOffsets = offsetsWithin(s, is3d ? s : 0, true);
  const patchSize = patchOffsets.length;
  const scale = 1 / (h * h * patchSize);
  const out = new Float32Array(indices.length);
  for (let n = 0; n < indices.length; n++) {
    const i = indices[n];
    const z = Math.floor(i / plane);
    const y = Math.floor(i / nx) % ny;
    const x = i % nx;
    const centre = (z + mz) * pplane + (y + margin) * pnx + (x + margin);
    let sum = 0;
    let weightSum = 0;
    let maxWeight = 0;
    for (let k = 0; k < searchOffsets.length; k++) {
      const other = centre + searchOffsets[k];
      let d2 = 0;
      for (let q = 0; q < patchSize; q++) {
        const d = padded[centre + patchOffsets[q]] - padded[other + patchOffsets[q]];
        d2 += d * d;
      }
      const w = Math.exp(-d2 * scale);
      sum += w * padded[other];
      weightSum += w;
      if (w > maxWeight) maxWeight = w;
    }
    // The centre compared with itself always has distance 0 (weight 1), which would let noise
    // through; it gets the largest weight of the others instead (Buades et al.).
    const centreWeight = maxWeight > 0 ? maxWeight : 1;
    sum += centreWeight * padded[centre];
    weightSum += centreWeight;
    out[n] = sum / weightSum;
  }
  return out;
}
