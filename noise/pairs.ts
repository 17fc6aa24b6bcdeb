/**
 * (signal, observation) pairs that a noise model is fitted to, without copying them: from a
 * calibration stack (the mean of the frames is the pseudo-clean signal of each frame's pixel) or
 * from a noisy image and a denoiser's output (the bootstrap of DivNoising).
 */
import { InputError } from '../core/errors.js';
import { sampleTypeRange, type SampleType } from '../core/volume.js';

export interface NoisePairs {
  /** Number of pairs. */
  count: number;
  /** Pseudo-clean signal of pair i, input units. */
  signal(i: number): number;
  /** Noisy observation of pair i, input units. */
  observation(i: number): number;
  /** Observations left out: at the sample type's limits (clipped) or not finite. */
  excluded: { clipped: number; nonFinite: number };
}

/**
 * Pairs of a stack [N, Y, X] of repeated frames: (mean over frames of pixel p, frame f at p) for
 * every pixel none of whose observations is clipped or non-finite (as calibrateNoise does). A frame
 * is part of its own mean, so y - mean has variance (N - 1) / N times the noise's; the observation
 * is given as mean + (y - mean) sqrt(N / (N - 1)), the correction calibrateNoise applies to variances.
 */
export function calibrationPairs(source: string, stack: Float32Array, shape: readonly number[], sampleType: SampleType = 'float32'): NoisePairs {
  if (shape.length !== 3) throw new InputError(source, `calibration needs a stack of frames [N, Y, X], got shape [${shape.join(', ')}]`);
  const [N, Y, X] = shape;
  if (N < 10) throw new InputError(source, `calibration needs repeated acquisitions (about 100 frames), got ${N}`);
  const P = Y * X;
  const [typeMin, typeMax] = sampleTypeRange(sampleType);
  const usable: number[] = [];
  const mean: number[] = [];
  let clipped = 0;
  let nonFinite = 0;
  for (let p = 0; p < P; p++) {
    let sum = 0;
    let ok = true;
    for (let f = 0; f < N; f++) {
      const v = stack[f * P + p];
      if (!Number.isFinite(v)) {
        nonFinite++;
        ok = false;
      } else if (v <= typeMin || v >= typeMax) {
        clipped++;
        ok = false;
      }
      sum += v;
    }
    if (ok) {
      usable.push(p);
      mean.push(sum / N);
    }
  }
  if (usable.length < 16) throw new InputError(source, `too few pixels without clipped or NaN values (${usable.length}) to calibrate`);
  const U = usable.length;
  const correction = Math.sqrt(N / (N - 1));
  return {
    count: U * N,
    signal: (i) => mean[i % U],
    observation: (i) => {
      const s = mean[i % U];
      return s + (stack[Math.floor(i / U) * P + usable[i % U]] - s) * correction;
    },
    excluded: { clipped, nonFinite },
  };
}

/**
 * Pairs of noisy images and their denoised versions (same shapes): (denoised, noisy) per voxel.
 * Voxels where either is non-finite, or the noisy value is at the sample type's limits, are left out.
 */
export function denoisedPairs(images: readonly { name: string; noisy: Float32Array; denoised: Float32Array; sampleType: SampleType }[]): NoisePairs {
  const total = images.reduce((n, image) => n + image.noisy.length, 0);
  const signal = new Float32Array(total);
  const observation = new Float32Array(total);
  let count = 0;
  let clipped = 0;
  let nonFinite = 0;
  for (const image of images) {
    if (image.noisy.length !== image.denoised.length) throw new InputError(image.name, `denoised output has ${image.denoised.length} values, the image ${image.noisy.length}`);
    const [typeMin, typeMax] = sampleTypeRange(image.sampleType);
    for (let i = 0; i < image.noisy.length; i++) {
      const x = image.noisy[i];
      const s = image.denoised[i];
      if (!Number.isFinite(x) || !Number.isFinite(s)) nonFinite++;
      else if (x <= typeMin || x >= typeMax) clipped++;
      else {
        signal[count] = s;
        observation[count++] = x;
      }
    }
  }
  if (count < 16) throw new InputError(images.map((im) => im.name).join(', '), `too few usable pixels (${count}) to fit a noise model`);
  return { count, signal: (i) => signal[i], observation: (i) => observation[i], excluded: { clipped, nonFinite } };
}
