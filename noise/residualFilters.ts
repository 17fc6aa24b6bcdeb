/**
 * Residual filters for noise estimation and the geometry that keeps pixel selection unbiased.
 *
 * A residual here is a linear filter K applied to the image that annihilates every quadratic
 * signal (constant, ramps, curvature), normalised to sum K^2 = 1, so for pixel-wise independent
 * noise of variance s^2 its variance is exactly s^2 whatever K is; texture only adds to it.
 * Two kinds:
 * - Immerkaer's 3x3 Laplacian difference [1 -2 1; -2 4 -2; 1 -2 1] / 6: the blind-spot residual
 *   y - (edge sum / 2 - corner sum / 4) divided by its gain 1.5 (= sqrt(2.25)).
 * - A learned 5x5 filter: the minimum-variance direction (smallest eigenvector) of the covariance of
 *   weak-texture 5x5 patches, restricted to the 19-dimensional space of 5x5 filters that annihilate
 *   quadratics (products of discrete Gram polynomials of orders i + j >= 3). This is the
 *   minimum-eigenvalue idea of PCA noise estimation (Liu, Tanaka, Okutomi 2013; Chen, Zhu, Heng 2015),
 *   with one change: the filter is fitted on one half of the image (a checkerboard of blocks) and
 *   applied to the other (cross-fitting), so the sample eigenvalue's downward bias (the smallest
 *   eigenvalue of a sample covariance underestimates the noise variance by about (1 - sqrt(d/n))^2)
 *   does not reach the estimate (patches that train a fold's filter lie 4 pixels inside its blocks, so
 *   no patch of the other fold shares a pixel with them). It is fitted per intensity band (terciles;
 *   grain and texture change with brightness) and kept, per band, only where it leaves less variance
 *   than Immerkaer's. It removes structured components a fixed filter passes, such as scan-line or
 *   column patterns in scanned photographs (Set12 boat at sigma 10: 9% high with Immerkaer's filter,
 *   3% with the learned one).
 *
 * Texture screening uses the mean squared Immerkaer residual (noise-variance units) at the ring of
 * pixels 4 to 8 away (240 residuals: weak texture only shows in many). Each ring residual reads pixels at least 3 away
 * from the centre, outside the 5x5 patch of the centre's residual, so for pure noise the screen is
 * independent of the residual it screens and selecting by it does not bias the estimate.
 */
import { Rng } from '../core/rng.js';

/** Half-width of the learned filter's support (5x5). */
export const PATCH_RADIUS = 2;
const PATCH_SIDE = 2 * PATCH_RADIUS + 1;
/** Sum of squares of Immerkaer's residual y - (edges / 2 - corners / 4): 1 + 4/4 + 4/16. */
export const IMMERKAER_GAIN = 2.25;

/** Discrete orthonormal (Gram) polynomials of orders 0..n-1 on n points centred at 0. */
export function gramPolynomials(n: number): number[][] {
  const half = (n - 1) / 2;
  const out: number[][] = [];
  for (let order = 0; order < n; order++) {
    let v = Array.from({ length: n }, (_, k) => (k - half) ** order);
    for (const g of out) {
      const dot = v.reduce((s, t, k) => s + t * g[k], 0);
      v = v.map((t, k) => t - dot * g[k]);
    }
    const norm = Math.sqrt(v.reduce((s, t) => s + t * t, 0));
    out.push(v.map((t) => t / norm));
  }
  return out;
}

/**
 * Orthonormal basis (row-major 5x5 filters) of the filters that annihilate all polynomials of degree
 * <= 2: products g_i(y) g_j(x) with i + j >= 3.
 */
/** The Gram polynomials on the patch side and the (row order, column order) of each basis filter. */
export const QUADRATIC_FREE_ORDERS: { polynomials: readonly number[][]; orders: readonly (readonly [number, number])[] } = (() => {
  const orders: [number, number][] = [];
  for (let i = 0; i < PATCH_SIDE; i++) for (let j = 0; j < PATCH_SIDE; j++) if (i + j >= 3) orders.push([i, j]);
  return { polynomials: gramPolynomials(PATCH_SIDE), orders };
})();

export const QUADRATIC_FREE_BASIS: readonly Float64Array[] = (() => {
  const g = QUADRATIC_FREE_ORDERS.polynomials;
  const basis: Float64Array[] = [];
  for (const [i, j] of QUADRATIC_FREE_ORDERS.orders) {
    const b = new Float64Array(PATCH_SIDE * PATCH_SIDE);
    for (let a = 0; a < PATCH_SIDE; a++) for (let c = 0; c < PATCH_SIDE; c++) b[a * PATCH_SIDE + c] = g[i][a] * g[j][c];
    basis.push(b);
  }
  return basis;
})();

/** Eigen-decomposition of a symmetric n x n matrix (cyclic Jacobi); vectors[k * n + j] is component k of eigenvector j. */
export function symmetricEigen(matrix: Float64Array, n: number): { values: Float64Array; vectors: Float64Array } {
  const a = Float64Array.from(matrix);
  const v = new Float64Array(n * n);
  for (let i = 0; i < n; i++) v[i * n + i] = 1;
  let scale = 0;
  for (let i = 0; i < n * n; i++) scale += a[i] * a[i];
  for (let sweep = 0; sweep < 60; sweep++) {
    let off = 0;
    for (let i = 0; i < n; i++) for (let j = i + 1; j < n; j++) off += a[i * n + j] ** 2;
    if (off <= 1e-24 * scale) break;
    for (let p = 0; p < n; p++)
      for (let q = p + 1; q < n; q++) {
        const apq = a[p * n + q];
        if (apq === 0) continue;
        const theta = (a[q * n + q] - a[p * n + p]) / (2 * apq);
        const t = (theta >= 0 ? 1 : -1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
        const c = 1 / Math.sqrt(t * t + 1);
        const s = t * c;
        for (let k = 0; k < n; k++) {
          const akp = a[k * n + p];
          const akq = a[k * n + q];
          a[k * n + p] = c * akp - s * akq;
          a[k * n + q] = s * akp + c * akq;
        }
        for (let k = 0; k < n; k++) {
          const apk = a[p * n + k];
          const aqk = a[q * n + k];
          a[p * n + k] = c * apk - s * aqk;
          a[q * n + k] = s * apk + c * aqk;
        }
        for (let k = 0; k < n; k++) {
          const vkp = v[k * n + p];
          const vkq = v[k * n + q];
          v[k * n + p] = c * vkp - s * vkq;
          v[k * n + q] = s * vkp + c * vkq;
        }
      }
  }
  const values = new Float64Array(n);
  for (let i = 0; i < n; i++) values[i] = a[i * n + i];
  return { values, vectors: v };
}

/** Where the texture screen looks: ring offsets (dy, dx) and how far from the border a centre must be. */
export interface RingGeometry {
  inner: number;
  outer: number;
  stride: number;
  offsets: readonly (readonly [number, number])[];
  /** Centres at least this far from every border (the ring's residuals read one pixel further). */
  border: number;
}

/** Ring of Immerkaer residuals at Chebyshev distance inner..outer on a `stride` lattice. */
export function ringGeometry(inner: number, outer: number, stride: number): RingGeometry {
  const offsets: [number, number][] = [];
  for (let dy = -outer; dy <= outer; dy += stride)
    for (let dx = -outer; dx <= outer; dx += stride) if (Math.max(Math.abs(dy), Math.abs(dx)) >= inner) offsets.push([dy, dx]);
  return { inner, outer, stride, offsets, border: Math.max(outer + 1, PATCH_RADIUS) };
}

/** Default ring (240 residuals 4..8 away); images under 40 pixels a side use the 32 at distance 4. */
export const WIDE_RING = ringGeometry(4, 8, 1);
export const NARROW_RING = ringGeometry(4, 4, 1);

const medianCache = new Map<string, number>();

/**
 * Median of the ring statistic (mean squared normalised residual over the ring) for pure unit-variance
 * noise: the screen keeps a pixel when its ring statistic is below this times the noise variance, which
 * keeps half the pixels of a texture-free region. Measured once per geometry on seeded white noise.
 */
export function ringNoiseMedian(ring: RingGeometry): number {
  const key = `${ring.inner}/${ring.outer}/${ring.stride}`;
  const cached = medianCache.get(key);
  if (cached !== undefined) return cached;
  const side = 2 * ring.border + 96;
  const rng = new Rng(20131);
  const noise = new Float64Array(side * side);
  for (let i = 0; i < noise.length; i++) noise[i] = rng.normal();
  const residual = new Float64Array(side * side);
  for (let y = 1; y < side - 1; y++)
    for (let x = 1; x < side - 1; x++) {
      const i = y * side + x;
      residual[i] = immerkaerResidual(noise, i, side) ** 2 / IMMERKAER_GAIN;
    }
  const stats: number[] = [];
  for (let y = ring.border; y < side - ring.border; y++)
    for (let x = ring.border; x < side - ring.border; x++) {
      let sum = 0;
      for (const [dy, dx] of ring.offsets) sum += residual[(y + dy) * side + x + dx];
      stats.push(sum / ring.offsets.length);
    }
  stats.sort((p, q) => p - q);
  const median = stats[stats.length >> 1];
  medianCache.set(key, median);
  return median;
}

/** Immerkaer's residual y - (edges / 2 - corners / 4) at flat index i of rows `width` long (not normalised). */
export function immerkaerResidual(data: ArrayLike<number>, i: number, width: number): number {
  const edges = data[i - width] + data[i + width] + data[i - 1] + data[i + 1];
  const corners = data[i - width - 1] + data[i - width + 1] + data[i + width - 1] + data[i + width + 1];
  return data[i] - (edges / 2 - corners / 4);
}
