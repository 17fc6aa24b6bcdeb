/** Random training patches cut from an in-memory volume. */
import { InputError } from '../core/errors.js';
import type { Rng } from '../core/rng.js';
import type { Shape, Volume } from '../core/volume.js';
import { voxelCount } from '../core/volume.js';

/**
 * A random patch of `patchShape` from the volume, its corner uniform over all positions where it fits.
 * InputError(name, ...) if the volume's dimensionality differs or it is smaller than the patch in any axis.
 */
export function randomPatch(volume: Volume, patchShape: Shape, rng: Rng, name = 'volume'): Float32Array {
  const shape = volume.shape;
  if (shape.length !== patchShape.length) {
    throw new InputError(name, `is ${shape.length}D [${shape.join(', ')}] but the training patches are ${patchShape.length}D [${patchShape.join(', ')}]`);
  }
  for (let a = 0; a < shape.length; a++) {
    if (shape[a] < patchShape[a]) {
      throw new InputError(name, `shape [${shape.join(', ')}] is smaller than the training patch [${patchShape.join(', ')}]; use a smaller patch size`);
    }
  }
  const [vz, vy, vx] = shape.length === 3 ? shape : [1, shape[0], shape[1]];
  const [pz, py, px] = patchShape.length === 3 ? patchShape : [1, patchShape[0], patchShape[1]];
  const z0 = rng.int(vz - pz + 1);
  const y0 = rng.int(vy - py + 1);
  const x0 = rng.int(vx - px + 1);
  const out = new Float32Array(voxelCount(patchShape));
  for (let z = 0; z < pz; z++) {
    for (let y = 0; y < py; y++) {
      const from = ((z0 + z) * vy + (y0 + y)) * vx + x0;
      out.set(volume.data.subarray(from, from + px), (z * py + y) * px);
    }
  }
  return out;
}
