/**
 * Dihedral augmentation of training patches: flips and 90-degree rotations in the YX plane. Z (3D)
 * is never mixed into YX, since microscopy stacks are usually anisotropic.
 */
import { Rng } from '../core/rng.js';
import type { Shape } from '../core/volume.js';
import { voxelCount } from '../core/volume.js';

/**
 * Transform k in 0..7 of the dihedral group of the YX square, as bits: 4 = transpose Y and X first,
 * then 2 = flip Y, 1 = flip X. Transpose plus one flip is a 90-degree rotation.
 */
export const dihedralCount = 8;

function planeOf(shape: Shape): { slices: number; ny: number; nx: number } {
  if (shape.length === 2) return { slices: 1, ny: shape[0], nx: shape[1] };
  return { slices: shape[0], ny: shape[1], nx: shape[2] };
}

/** True when transform k swaps Y and X (so it needs a square YX plane). */
export function swapsAxes(k: number): boolean {
  return (k & 4) !== 0;
}

/** For each output index of one YX plane, the input index it is taken from under transform k. */
function sourceIndexMap(ny: number, nx: number, k: number): Int32Array {
  if (!Number.isInteger(k) || k < 0 || k >= dihedralCount) throw new RangeError(`dihedral transform index must be 0..7, got ${k}`);
  const transpose = swapsAxes(k);
  if (transpose && ny !== nx) throw new RangeError(`dihedral transform ${k} swaps Y and X and needs a square YX plane, got ${ny}x${nx}`);
  const flipY = (k & 2) !== 0;
  const flipX = (k & 1) !== 0;
  const map = new Int32Array(ny * nx);
  for (let y = 0; y < ny; y++) {
    for (let x = 0; x < nx; x++) {
      const a = flipY ? ny - 1 - y : y;
      const b = flipX ? nx - 1 - x : x;
      map[y * nx + x] = transpose ? b * nx + a : a * nx + b;
    }
  }
  return map;
}

function checkLength(patch: Float32Array, shape: Shape): void {
  if (patch.length !== voxelCount(shape)) throw new RangeError(`patch has ${patch.length} values, shape [${shape.join(', ')}] needs ${voxelCount(shape)}`);
}

/** Apply dihedral transform k (0..7) to every YX plane of the patch; the shape is unchanged. */
export function dihedralTransform(patch: Float32Array, shape: Shape, k: number): Float32Array {
  return remapPlanes(patch, shape, k, false);
}

/** Undo dihedralTransform(., shape, k). */
export function inverseDihedralTransform(patch: Float32Array, shape: Shape, k: number): Float32Array {
  return remapPlanes(patch, shape, k, true);
}

/** Gathers (forward) or scatters (inverse) every YX plane through transform k's source-index map. */
function remapPlanes(patch: Float32Array, shape: Shape, k: number, inverse: boolean): Float32Array {
  checkLength(patch, shape);
  const { slices, ny, nx } = planeOf(shape);
  const map = sourceIndexMap(ny, nx, k);
  const plane = ny * nx;
  const out = new Float32Array(patch.length);
  for (let s = 0; s < slices; s++) {
    const base = s * plane;
    if (inverse) for (let i = 0; i < plane; i++) out[base + map[i]] = patch[base + i];
    else for (let i = 0; i < plane; i++) out[base + i] = patch[base + map[i]];
  }
  return out;
}

/**
 * One of the 8 dihedral transforms chosen by rng (only the 4 flips when the YX plane is not square,
 * since the others would change the shape).
 */
export function augmentPatch(patch: Float32Array, shape: Shape, rng: Rng): Float32Array {
  const { ny, nx } = planeOf(shape);
  const k = rng.int(ny === nx ? dihedralCount : 4);
  return dihedralTransform(patch, shape, k);
}

/**
 * Random flips / 90-degree rotations of a patch and (paired methods) its target, the same transform
 * for both: the target's copy replays the generator state the input's draw used.
 */
export function augmentMethodPatch<T extends { shape: Shape; data: Float32Array; target?: Float32Array; rng: Rng }>(p: T, enabled: boolean): T {
  if (!enabled) return p;
  if (!p.target) return { ...p, data: augmentPatch(p.data, p.shape, p.rng) };
  const replay = new Rng(0);
  replay.setState(p.rng.getState());
  const data = augmentPatch(p.data, p.shape, p.rng);
  return { ...p, data, target: augmentPatch(p.target, p.shape, replay) };
}
