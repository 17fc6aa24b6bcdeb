/**
 * Noise2Void blind-spot masking on the CPU (runs for every patch of every batch, so plain typed
 * arrays and no allocation per masked pixel beyond one small window buffer).
 */
import type { Rng } from '../core/rng.js';
import type { Shape } from '../core/volume.js';
import { voxelCount } from '../core/volume.js';
import { medianInPlace } from '../core/select.js';

/**
 * How a masked pixel's value is replaced, all from its (2 radius + 1)-wide window clipped to the patch:
 * - 'uniform-with-centre': a uniformly drawn window pixel, possibly the centre itself (n2v's uniform_withCP);
 * - 'uniform-without-centre': a uniformly drawn window pixel other than the centre;
 * - 'median': the median of the window without the centre (N2V2).
 */
export type ReplacementStrategy = 'uniform-with-centre' | 'uniform-without-centre' | 'median';

export interface MaskOptions {
  /** Fraction of pixels masked per patch (default 0.015); one per grid box of side fraction^(-1/dims). */
  fraction: number;
  strategy: ReplacementStrategy;
  /** Window half-width in pixels: 2 gives a 5x5 (x5) window. */
  radius: number;
}

export const defaultMaskOptions: MaskOptions = { fraction: 0.015, strategy: 'uniform-without-centre', radius: 2 };

/**
 * Boundaries of the stratification boxes along one axis of `length` pixels: box i spans
 * [bounds[i], bounds[i + 1]). Boxes have real-valued side `side` and a grid phase in [0, side), so
 * bounds are floor(i * side - phase): the first box may start before 0 and the last end after
 * `length` (cut boxes). With a uniformly random phase every pixel is masked with probability exactly
 * 1 / side per axis, whatever the patch size; a fixed grid with a rounded side (n2v's) is biased.
 */
export function stratificationBounds(length: number, side: number, phase: number): number[] {
  const bounds: number[] = [];
  let i = 0;
  while (Math.floor((i + 1) * side - phase) <= 0) i++;
  for (; Math.floor(i * side - phase) < length; i++) bounds.push(Math.floor(i * side - phase));
  bounds.push(Math.floor(i * side - phase));
  return bounds;
}

/**
 * The stratification grid maskPatch uses for a patch: per axis (in shape order) the box bounds.
 * It draws one phase per axis from rng; maskPatch calls it first, so a copy of the rng state
 * reproduces maskPatch's grid.
 */
export function stratifiedGrid(shape: Shape, fraction: number, rng: Rng): number[][] {
  const side = stratificationBoxSide(fraction, shape.length);
  return shape.map((length) => stratificationBounds(length, side, rng.uniform() * side));
}

/** Box side along each axis for a masked fraction in `dims` dimensions. */
export function stratificationBoxSide(fraction: number, dims: number): number {
  return fraction ** (-1 / dims);
}

function validate(patch: Float32Array, shape: Shape, opts: MaskOptions): void {
  if (shape.length !== 2 && shape.length !== 3) throw new RangeError(`maskPatch: shape must be 2D or 3D, got rank ${(shape as readonly number[]).length}`);
  if (patch.length !== voxelCount(shape)) throw new RangeError(`maskPatch: patch has ${patch.length} values, shape [${shape.join(', ')}] needs ${voxelCount(shape)}`);
  if (!(opts.fraction > 0 && opts.fraction <= 1)) throw new RangeError(`maskPatch: fraction must be in (0, 1], got ${opts.fraction}`);
  if (!Number.isInteger(opts.radius) || opts.radius < 1) throw new RangeError(`maskPatch: radius must be an integer >= 1, got ${opts.radius}`);
}

/**
 * Stratified N2V masking of one patch (2D [Y, X] or 3D [Z, Y, X]): one masked pixel per grid box of
 * side ~ fraction^(-1/dims) (grid with a random phase, see stratificationBounds), at a uniformly random
 * position inside the box (dropped when it falls outside the patch in a box cut by the border, which
 * keeps the density uniform: the expected masked fraction is exactly `fraction`). Each masked pixel gets a
 * replacement value drawn from the original patch per `opts.strategy`, with the window clipped to the
 * patch. Returns the network input and a 0/1 mask of the masked pixels.
 */
export function maskPatch(patch: Float32Array, shape: Shape, opts: MaskOptions, rng: Rng): { input: Float32Array; mask: Float32Array; count: number } {
  validate(patch, shape, opts);
  // Treat 2D as 3D with one slice so there is a single code path.
  const [nz, ny, nx] = shape.length === 3 ? shape : [1, shape[0], shape[1]];
  const dims = shape.length;
  const grid = stratifiedGrid(shape, opts.fraction, rng);
  const zBounds = dims === 3 ? grid[0] : [0, 1];
  const yBounds = grid[dims - 2];
  const xBounds = grid[dims - 1];
  const input = Float32Array.from(patch);
  const mask = new Float32Array(patch.length);
  const r = opts.radius;
  const zr = dims === 3 ? r : 0;
  const window = new Float64Array((2 * zr + 1) * (2 * r + 1) * (2 * r + 1));
  let count = 0;

  // A uniform position in the box's full (uncut) extent; positions outside the patch are dropped.
  const pick = (bounds: number[], i: number): number => bounds[i] + rng.int(bounds[i + 1] - bounds[i]);

  for (let bz = 0; bz < zBounds.length - 1; bz++) {
    for (let by = 0; by < yBounds.length - 1; by++) {
      for (let bx = 0; bx < xBounds.length - 1; bx++) {
        const z = dims === 3 ? pick(zBounds, bz) : 0;
        const y = pick(yBounds, by);
        const x = pick(xBounds, bx);
        if (z < 0 || y < 0 || x < 0 || z >= nz || y >= ny || x >= nx) continue;
        const centre = (z * ny + y) * nx + x;
        const z0 = Math.max(0, z - zr);
        const z1 = Math.min(nz - 1, z + zr);
        const y0 = Math.max(0, y - r);
        const y1 = Math.min(ny - 1, y + r);
        const x0 = Math.max(0, x - r);
        const x1 = Math.min(nx - 1, x + r);
        const windowSize = (z1 - z0 + 1) * (y1 - y0 + 1) * (x1 - x0 + 1);
        let replacement: number;
        if (opts.strategy === 'median') {
          let n = 0;
          for (let wz = z0; wz <= z1; wz++)
            for (let wy = y0; wy <= y1; wy++)
              for (let wx = x0; wx <= x1; wx++) {
                const index = (wz * ny + wy) * nx + wx;
                if (index !== centre) window[n++] = patch[index];
              }
          replacement = n === 0 ? patch[centre] : medianInPlace(window, n);
        } else {
          const withCentre = opts.strategy === 'uniform-with-centre';
          const choices = withCentre ? windowSize : windowSize - 1;
          if (choices === 0) {
            replacement = patch[centre];
          } else {
            let k = rng.int(choices);
            const centreRank = ((z - z0) * (y1 - y0 + 1) + (y - y0)) * (x1 - x0 + 1) + (x - x0);
            if (!withCentre && k >= centreRank) k++;
            const wx = x0 + (k % (x1 - x0 + 1));
            const rest = Math.floor(k / (x1 - x0 + 1));
            const wy = y0 + (rest % (y1 - y0 + 1));
            const wz = z0 + Math.floor(rest / (y1 - y0 + 1));
            replacement = patch[(wz * ny + wy) * nx + wx];
          }
        }
        input[centre] = replacement;
        mask[centre] = 1;
        count++;
      }
    }
  }
  return { input, mask, count };
}

