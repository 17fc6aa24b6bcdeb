import { type OperatorFunction, mergeMap, range, map } from 'rxjs';
import { Rng } from '../core/rng.js';
import type { Shape, Volume } from '../core/volume.js';
import { voxelCount } from '../core/volume.js';
import { randomPatch } from '../models/patches.js';
import { normalise, type Normalisation } from '../models/normalise.js';

/** One training patch, normalised, with the generator that every later random choice for it draws from. */
export interface PatchSample {
  step: number;
  index: number;
  data: Float32Array;
  shape: Shape;
  rng: Rng;
}

export interface SamplePatchesOptions {
  volumes: ReadonlyArray<{ volume: Volume; name: string }>;
  /** YX or ZYX, pixels/voxels. */
  patchShape: Shape;
  patchesPerStep: number;
  normalisation: Normalisation;
  seed: number;
}

/**
 * Step index -> `patchesPerStep` random patches. Each patch's randomness derives from (seed, step,
 * index) alone, so a run resumed at step k draws exactly the patches an uninterrupted run would.
 * Volumes are chosen with probability proportional to their voxel count: every voxel equally likely.
 */
export function samplePatches(opts: SamplePatchesOptions): OperatorFunction<number, PatchSample> {
  const weights = opts.volumes.map((v) => voxelCount(v.volume.shape));
  const total = weights.reduce((a, b) => a + b, 0);
  const cumulative = weights.map(
    (
      (sum) => (w: number) =>
        (sum += w / total)
    )(0),
  );
  return mergeMap((step: number) =>
    range(0, opts.patchesPerStep).pipe(
      map((index) => {
        const rng = new Rng(mixSeed(opts.seed, step, index));
        const u = rng.uniform();
        let which = cumulative.findIndex((c) => u < c);
        if (which < 0) which = opts.volumes.length - 1;
        const { volume, name } = opts.volumes[which];
        const raw = randomPatch(volume, opts.patchShape, rng, name);
        return { step, index, data: normalise(raw, opts.normalisation), shape: opts.patchShape, rng };
      }),
    ),
  );
}

/** A well-spread 32-bit seed from (seed, step, index). */
export function mixSeed(seed: number, step: number, index: number): number {
  let h = Math.imul(seed ^ 0x9e3779b9, 0x85ebca6b) >>> 0;
  h = Math.imul(h ^ (step + 0x632be5ab), 0xc2b2ae35) >>> 0;
  h = Math.imul(h ^ (index + 0x27d4eb2f), 0x165667b1) >>> 0;
  return (h ^ (h >>> 15)) >>> 0;
}
