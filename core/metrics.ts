/**
 * Image quality metrics against a clean reference. `range` is the data range L of the
 * reference scale (255 for 8-bit images, max - min for others); both metrics depend on it.
 */
import type { Shape } from './volume.js';

function checkSameLength(clean: Float32Array, test: Float32Array, range: number): void {
  if (clean.length !== test.length) throw new RangeError(`metric inputs differ in length: ${clean.length} vs ${test.length}`);
  if (clean.length === 0) throw new RangeError('metric inputs are empty');
  if (!(range > 0) || !Number.isFinite(range)) throw new RangeError(`data range must be a positive finite number, got ${range}`);
}

/** PSNR in dB: 10 log10(range^2 / MSE), MSE over all voxels; +Infinity when the images are identical. */
export function psnr(clean: Float32Array, test: Float32Array, range: number): number {
  checkSameLength(clean, test, range);
  let sumSquares = 0;
  for (let i = 0; i < clean.length; i++) {
    const d = clean[i] - test[i];
    sumSquares += d * d;
  }
  const mse = sumSquares / clean.length;
  return 10 * Math.log10((range * range) / mse);
}

/** Gaussian window of Wang et al. 2004: 11 taps, sigma 1.5, normalised to sum 1. */
export const ssimWindowSize = 11;
export const ssimSigma = 1.5;
const ssimK1 = 0.01;
const ssimK2 = 0.03;

const gaussianTaps: Float64Array = (() => {
  const taps = new Float64Array(ssimWindowSize);
  const centre = (ssimWindowSize - 1) / 2;
  let sum = 0;
  for (let k = 0; k < ssimWindowSize; k++) {
    taps[k] = Math.exp(-((k - centre) ** 2) / (2 * ssimSigma * ssimSigma));
    sum += taps[k];
  }
  for (let k = 0; k < ssimWindowSize; k++) taps[k] /= sum;
  return taps;
})();

/**
 * Mean SSIM (Wang, Bovik, Sheikh, Simoncelli 2004) with the 11x11 Gaussian window, sigma 1.5,
 * K1 = 0.01, K2 = 0.03, population (not sample) covariances, averaged over the windows that lie
 * fully inside the image ("valid" region). This equals skimage's
 * `structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=range)`
 * and the authors' ssim_index.m without its automatic downsampling.
 * 2D [Y, X]: one value; 3D [Z, Y, X]: the mean of the per-slice values. Needs Y, X >= 11.
 */
export function ssim(clean: Float32Array, test: Float32Array, shape: Shape, range: number): number {
  checkSameLength(clean, test, range);
  const [slices, height, width] = shape.length === 3 ? shape : [1, shape[0], shape[1]];
  if (slices * height * width !== clean.length) {
    throw new RangeError(`shape [${shape.join(', ')}] does not match ${clean.length} values`);
  }
  if (height < ssimWindowSize || width < ssimWindowSize) {
    throw new RangeError(`SSIM needs slices of at least ${ssimWindowSize}x${ssimWindowSize} pixels, got ${height}x${width}`);
  }
  let total = 0;
  const sliceSize = height * width;
  for (let z = 0; z < slices; z++) {
    const begin = z * sliceSize;
    total += ssimSlice(clean.subarray(begin, begin + sliceSize), test.subarray(begin, begin + sliceSize), height, width, range);
  }
  return total / slices;
}

/**
 * Separable filtering with a ring of 11 horizontally-filtered rows, so memory stays
 * O(11 * width) however tall the image is.
 */
function ssimSlice(a: Float32Array, b: Float32Array, height: number, width: number, range: number): number {
  const c1 = (ssimK1 * range) ** 2;
  const c2 = (ssimK2 * range) ** 2;
  const n = ssimWindowSize;
  const outWidth = width - n + 1;
  const outHeight = height - n + 1;
  // Per ring row: filtered a, b, a^2, b^2, ab.
  const ring = Array.from({ length: n }, () => Array.from({ length: 5 }, () => new Float64Array(outWidth)));
  const filterRow = (y: number, target: Float64Array[]): void => {
    const [ma, mb, maa, mbb, mab] = target;
    const row = y * width;
    for (let x = 0; x < outWidth; x++) {
      let sa = 0;
      let sb = 0;
      let saa = 0;
      let sbb = 0;
      let sab = 0;
      for (let k = 0; k < n; k++) {
        const w = gaussianTaps[k];
        const va = a[row + x + k];
        const vb = b[row + x + k];
        sa += w * va;
        sb += w * vb;
        saa += w * va * va;
        sbb += w * vb * vb;
        sab += w * va * vb;
      }
      ma[x] = sa;
      mb[x] = sb;
      maa[x] = saa;
      mbb[x] = sbb;
      mab[x] = sab;
    }
  };
  for (let y = 0; y < n - 1; y++) filterRow(y, ring[y]);
  let sum = 0;
  for (let yOut = 0; yOut < outHeight; yOut++) {
    filterRow(yOut + n - 1, ring[(yOut + n - 1) % n]);
    for (let x = 0; x < outWidth; x++) {
      let muA = 0;
      let muB = 0;
      let eAA = 0;
      let eBB = 0;
      let eAB = 0;
      for (let k = 0; k < n; k++) {
        const w = gaussianTaps[k];
        const r = ring[(yOut + k) % n];
        muA += w * r[0][x];
        muB += w * r[1][x];
        eAA += w * r[2][x];
        eBB += w * r[3][x];
        eAB += w * r[4][x];
      }
      const varA = eAA - muA * muA;
      const varB = eBB - muB * muB;
      const cov = eAB - muA * muB;
      sum += ((2 * muA * muB + c1) * (2 * cov + c2)) / ((muA * muA + muB * muB + c1) * (varA + varB + c2));
    }
  }
  return sum / (outWidth * outHeight);
}
