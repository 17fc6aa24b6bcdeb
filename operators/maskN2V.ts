import { type OperatorFunction, map } from 'rxjs';
import type { Shape } from '../core/volume.js';
import { maskPatch, type MaskOptions } from '../models/masking.js';
import type { PatchSample } from './samplePatches.js';

/** A patch ready for a blind-spot loss: the network sees `input`; the loss compares with `target` where `mask` is 1. */
export interface MaskedPatch {
  step: number;
  shape: Shape;
  input: Float32Array;
  target: Float32Array;
  mask: Float32Array;
}

/** Noise2Void stratified masking with the configured replacement strategy. */
export function maskN2V(opts: MaskOptions): OperatorFunction<PatchSample, MaskedPatch> {
  return map((p) => {
    const { input, mask } = maskPatch(p.data, p.shape, opts, p.rng);
    return { step: p.step, shape: p.shape, input, target: p.data, mask };
  });
}
