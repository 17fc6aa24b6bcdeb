import { type OperatorFunction, mergeMap, range, map } from 'rxjs';
import { InputError } from '../core/errors.js';
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
  /** Paired methods (n2n, care): the same region of the target image, normalised like `data`. */
  target?: Float32Array;
  shape: Shape;
  rng: Rng;
}

export interface SamplePatchesOptions {
  /** `target`: an image of the same shape paired with `volume` (n2n / care); its patches come from the same place. */
  volumes: ReadonlyArray<{ volume: Volume; name: string; target?: Volume }>;
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
        const { volume, name, target } = opts.volumes[which];
        if (target) {
          const pair = randomPatchPair(volume, target, opts.patchShape, rng, name);
          return { step, index, data: normalise(pair.input, opts.normalisation), target: normalise(pair.target, opts.normalisation), shape: opts.patchShape, rng };
        }
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

/**
 * The same random patch from an image and its paired target (same shape): randomPatch's corner
 * draw, so an input patch is the one randomPatch would give with this rng.
 */
export function randomPatchPair(volume: Volume, target: Volume, patchShape: Shape, rng: Rng, name = 'volume'): { input: Float32Array; target: Float32Array } {
  if (target.shape.length !== volume.shape.length || target.shape.some((s, a) => s !== volume.shape[a])) {
    throw new InputError(name, `its target is ${target.shape.join('x')}, the image is ${volume.shape.join('x')}: pairs must have the same shape`);
  }
  const state = rng.getState();
  const input = randomPatch(volume, patchShape, rng, name);
  const replay = new Rng(0);
  replay.setState(state);
  return { input, target: randomPatch(target, patchShape, replay, name) };
}
