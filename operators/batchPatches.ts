import { type OperatorFunction, bufferCount, map } from 'rxjs';
import type { MaskedPatch } from './maskN2V.js';

/** A batch laid out for the model boundary: [B, (Z,) Y, X, 1] float32, C order. */
export interface TrainingBatch {
  step: number;
  /** [B, (Z,) Y, X, 1] */
  shape: number[];
  inputs: Float32Array;
  targets: Float32Array;
  masks: Float32Array;
}

/** Packs `batchSize` consecutive masked patches (all of one step) into one contiguous batch. */
export function batchPatches(opts: { batchSize: number }): OperatorFunction<MaskedPatch, TrainingBatch> {
  return (source) =>
    source.pipe(
      bufferCount(opts.batchSize),
      map((patches) => {
        const per = patches[0].input.length;
        const inputs = new Float32Array(per * patches.length);
        const targets = new Float32Array(per * patches.length);
        const masks = new Float32Array(per * patches.length);
        patches.forEach((p, i) => {
          if (p.step !== patches[0].step) throw new Error('batchPatches: a batch mixes patches of two steps');
          inputs.set(p.input, i * per);
          targets.set(p.target, i * per);
          masks.set(p.mask, i * per);
        });
        return { step: patches[0].step, shape: [patches.length, ...patches[0].shape, 1], inputs, targets, masks };
      }),
    );
}
