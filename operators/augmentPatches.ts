import { type OperatorFunction, map } from 'rxjs';
import { augmentPatch } from '../models/augment.js';
import type { PatchSample } from './samplePatches.js';

/** Random flips and in-plane 90-degree rotations (one of the 8 dihedral transforms of YX) per patch. */
export function augmentPatches(opts: { enabled: boolean }): OperatorFunction<PatchSample, PatchSample> {
  return map((p) => (opts.enabled ? { ...p, data: augmentPatch(p.data, p.shape, p.rng) } : p));
}
