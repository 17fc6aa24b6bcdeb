/**
 * Noise2Self J-invariant grid masking (Batson & Royer 2019, seed 003). The pixels of a patch are
 * split into k^dims phases by their coordinates modulo k; a training step masks one phase,
 * replacing each of its pixels by the "donut" mean of its 3x3 (3x3x3) neighbourhood without the
 * centre, and scores the network on that phase only. With k >= 2 every donut neighbour lies in
 * another phase, so the network input on the phase does not depend on the phase's own values: the
 * masked prediction is J-invariant. Cycling through all phases masks every pixel exactly once.
 *
 * The reference code weights the donut's diagonal neighbours by 1/2 and zero-pads the border; here
 * it is the plain mean of the neighbours that lie inside the patch (methods.md's "donut mean of
 * the 3x3 ring"), so border pixels are not pulled towards zero.
 */
import { Rng } from '../core/rng.js';
import type { Shape } from '../core/volume.js';
import { voxelCount } from '../core/volume.js';

function validate(shape: Shape, k: number): void {
  if (shape.length !== 2 && shape.length !== 3) throw new RangeError(`grid masking: shape must be 2D or 3D, got rank ${(shape as readonly number[]).length}`);
  if (!Number.isInteger(k) || k < 2) throw new RangeError(`grid masking: the grid side k must be an integer >= 2 (k = 1 would mask a pixel's donut neighbours too), got ${k}`);
}

/** Number of phases of a k-grid in `dims` dimensions: k^dims. */
export function gridPhaseCount(k: number, dims: 2 | 3): number {
  return k ** dims;
}

/** The phase of a pixel: its coordinates modulo k, as the number ((z mod k) k + y mod k) k + x mod k (no z in 2D). */
export function gridPhaseOf(coordinates: readonly number[], k: number): number {
  return coordinates.reduce((phase, c) => phase * k + (((c % k) + k) % k), 0);
}

/** 0/1 mask of the pixels of `phase` in a patch of `shape`. */
export function gridPhaseMask(shape: Shape, k: number, phase: number): Float32Array {
  validate(shape, k);
  const phases = gridPhaseCount(k, shape.length as 2 | 3);
  if (!Number.isInteger(phase) || phase < 0 || phase >= phases) throw new RangeError(`grid phase must be an integer in [0, ${phases}), got ${phase}`);
  const [nz, ny, nx] = shape.length === 3 ? shape : [1, shape[0], shape[1]];
  const mask = new Float32Array(voxelCount(shape));
  const coords = shape.length === 3 ? [0, 0, 0] : [0, 0];
  for (let z = 0; z < nz; z++) {
    for (let y = 0; y < ny; y++) {
      for (let x = 0; x < nx; x++) {
        if (shape.length === 3) {
          coords[0] = z;
          coords[1] = y;
          coords[2] = x;
        } else {
          coords[0] = y;
          coords[1] = x;
        }
        if (gridPhaseOf(coords, k) === phase) mask[(z * ny + y) * nx + x] = 1;
      }
    }
  }
  return mask;
}

/** Mean of the in-patch neighbours (8 in 2D, 26 in 3D) of pixel `index`, without the pixel itself. */
export function donutMeanAt(patch: Float32Array, shape: Shape, index: number): number {
  const [nz, ny, nx] = shape.length === 3 ? shape : [1, shape[0], shape[1]];
  const zr = shape.length === 3 ? 1 : 0;
  const z = Math.floor(index / (ny * nx));
  const y = Math.floor(index / nx) % ny;
  const x = index % nx;
  let sum = 0;
  let n = 0;
  for (let dz = -zr; dz <= zr; dz++) {
    const zz = z + dz;
    if (zz < 0 || zz >= nz) continue;
    for (let dy = -1; dy <= 1; dy++) {
      const yy = y + dy;
      if (yy < 0 || yy >= ny) continue;
      for (let dx = -1; dx <= 1; dx++) {
        const xx = x + dx;
        if (xx < 0 || xx >= nx || (dz === 0 && dy === 0 && dx === 0)) continue;
        sum += patch[(zz * ny + yy) * nx + xx];
        n++;
      }
    }
  }
  // A 1x1(x1) patch has no neighbours: nothing better than the value itself.
  return n === 0 ? patch[index] : sum / n;
}

/**
 * Masks one grid phase of a patch ([Y, X] or [Z, Y, X]): the phase's pixels replaced by their
 * donut mean. Returns the network input, the 0/1 mask of the phase (where the loss is computed;
 * the target is the unmodified patch) and the number of masked pixels.
 */
export function gridMaskPatch(patch: Float32Array, shape: Shape, k: number, phase: number): { input: Float32Array; mask: Float32Array; count: number } {
  if (patch.length !== voxelCount(shape)) throw new RangeError(`gridMaskPatch: patch has ${patch.length} values, shape [${shape.join(', ')}] needs ${voxelCount(shape)}`);
  const mask = gridPhaseMask(shape, k, phase);
  const input = Float32Array.from(patch);
  let count = 0;
  for (let i = 0; i < mask.length; i++) {
    if (mask[i] === 0) continue;
    // Neighbours are never in the same phase (k >= 2), so they still hold original values.
    input[i] = donutMeanAt(patch, shape, i);
    count++;
  }
  return { input, mask, count };
}

/**
 * The phase to mask at training step `step` (0-based): steps come in cycles of k^dims, each cycle a
 * random permutation of the phases (drawn from `seed` and the cycle number, so a resumed run gets
 * the same schedule), so every pixel of a patch position is masked exactly once per cycle.
 */
export function gridPhaseForStep(step: number, k: number, dims: 2 | 3, seed: number): number {
  if (!Number.isInteger(step) || step < 0) throw new RangeError(`step must be an integer >= 0, got ${step}`);
  const phases = gridPhaseCount(k, dims);
  const cycle = Math.floor(step / phases);
  const order = cyclePermutation(phases, (seed ^ Math.imul(cycle + 1, 0x9e3779b1)) >>> 0);
  return order[step % phases];
}

function cyclePermutation(n: number, seed: number): Int32Array {
  const rng = new Rng(seed);
  const order = Int32Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    const t = order[i];
    order[i] = order[j];
    order[j] = t;
  }
  return order;
}
