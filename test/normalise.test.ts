import { describe, expect, it } from 'vitest';
import { InputError } from '../core/errors.js';
import { Rng } from '../core/rng.js';
import type { Volume } from '../core/volume.js';
import { computeNormalisation, defaultPercentiles, denormalise, normalise, percentileOfSorted } from '../models/normalise.js';

const volume = (data: Float32Array, shape: [number, number]): Volume => ({ data, shape, sampleType: 'float32' });

function shuffled(n: number, rng: Rng): Float32Array {
  const values = Float32Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    [values[i], values[j]] = [values[j], values[i]];
  }
  return values;
}

describe('meanstd', () => {
  it('is the mean and population std over all volumes together; normalised data has mean 0, std 1; round-trips', () => {
    const rng = new Rng(1);
    const a = Float32Array.from({ length: 600 }, () => 1000 + 50 * rng.normal());
    const b = Float32Array.from({ length: 200 }, () => 3000 + 10 * rng.normal());
    const n = computeNormalisation([volume(a, [20, 30]), volume(b, [10, 20])], 'meanstd');
    const all = [...a, ...b];
    const mean = all.reduce((s, v) => s + v, 0) / all.length;
    const std = Math.sqrt(all.reduce((s, v) => s + (v - mean) ** 2, 0) / all.length);
    expect(n.mode).toBe('meanstd');
    expect(n.offset).toBeCloseTo(mean, 6);
    expect(n.scale).toBeCloseTo(std, 6);
    const normalised = normalise(a, n);
    const back = denormalise(normalised, n);
    for (let i = 0; i < a.length; i++) expect(back[i]).toBeCloseTo(a[i], 2);
    const z = [...normalise(a, n), ...normalise(b, n)];
    const zMean = z.reduce((s, v) => s + v, 0) / z.length;
    const zStd = Math.sqrt(z.reduce((s, v) => s + (v - zMean) ** 2, 0) / z.length);
    expect(Math.abs(zMean)).toBeLessThan(1e-5);
    expect(zStd).toBeCloseTo(1, 5);
  });

  it('constant data gets scale 1 (no division by zero); NaN is an InputError', () => {
    const n = computeNormalisation([volume(new Float32Array(12).fill(7), [3, 4])], 'meanstd');
    expect(n).toEqual({ mode: 'meanstd', offset: 7, scale: 1 });
    const withNaN = new Float32Array(12);
    withNaN[5] = NaN;
    expect(() => computeNormalisation([volume(withNaN, [3, 4])], 'meanstd')).toThrow(InputError);
    expect(() => computeNormalisation([volume(withNaN, [3, 4])], 'percentile')).toThrow(InputError);
    expect(() => computeNormalisation([], 'meanstd')).toThrow(InputError);
  });
});

describe('percentile', () => {
  it('exact percentiles of 0..N-1 (numpy linear interpolation) across volumes, all values used', () => {
    const rng = new Rng(2);
    const values = shuffled(1000, rng);
    const vols = [volume(values.slice(0, 700), [70, 10]), volume(values.slice(700), [30, 10])];
    const n = computeNormalisation(vols, 'percentile', { pLow: 1, pHigh: 99.5 });
    // For the sorted values 0..N-1, percentile p is p/100 * (N-1) exactly.
    expect(n.offset).toBeCloseTo(0.01 * 999, 4);
    expect(n.scale).toBeCloseTo((0.995 - 0.01) * 999, 4);
    expect(n.pLow).toBe(1);
    expect(n.pHigh).toBe(99.5);
    const d = computeNormalisation(vols, 'percentile');
    expect(d.offset).toBeCloseTo((defaultPercentiles.pLow / 100) * 999, 4);
    expect(d.offset + d.scale).toBeCloseTo((defaultPercentiles.pHigh / 100) * 999, 4);
    const back = denormalise(normalise(values, n), n);
    for (let i = 0; i < values.length; i += 37) expect(back[i]).toBeCloseTo(values[i], 3);
    const ends = normalise(Float32Array.of(n.offset, n.offset + n.scale), n);
    expect(ends[0]).toBeCloseTo(0, 5);
    expect(ends[1]).toBeCloseTo(1, 5);
  });

  it('percentileOfSorted interpolates between order statistics', () => {
    const sorted = [10, 20, 40];
    expect(percentileOfSorted(sorted, 0)).toBe(10);
    expect(percentileOfSorted(sorted, 100)).toBe(40);
    expect(percentileOfSorted(sorted, 50)).toBe(20);
    expect(percentileOfSorted(sorted, 75)).toBe(30);
    expect(percentileOfSorted(sorted, 25)).toBe(15);
  });

  it('subsamples when there are more values than maxSamples: close to exact, reproducible with the rng', () => {
    const rng = new Rng(4);
    const values = Float32Array.from({ length: 200_000 }, () => rng.uniform());
    const vols = [volume(values.subarray(0, 150_000), [300, 500]), volume(values.subarray(150_000), [100, 500])];
    const opts = { pLow: 5, pHigh: 95, maxSamples: 20_000 };
    const a = computeNormalisation(vols, 'percentile', { ...opts, rng: new Rng(9) });
    const b = computeNormalisation(vols, 'percentile', { ...opts, rng: new Rng(9) });
    const c = computeNormalisation(vols, 'percentile', { ...opts, rng: new Rng(10) });
    const exact = computeNormalisation(vols, 'percentile', { pLow: 5, pHigh: 95, maxSamples: 1e6 });
    expect(b).toEqual(a);
    expect(c.offset).not.toBe(a.offset);
    // Uniform(0, 1): the 5th and 95th percentiles are 0.05 and 0.95; sampling error ~ sqrt(p(1-p)/n) ~ 0.0015.
    expect(exact.offset).toBeCloseTo(0.05, 2);
    expect(Math.abs(a.offset - exact.offset)).toBeLessThan(0.006);
    expect(Math.abs(a.offset + a.scale - (exact.offset + exact.scale))).toBeLessThan(0.006);
    expect(a.offset).not.toBe(exact.offset);
  });

  it('rejects inverted or out-of-range percentiles', () => {
    const v = [volume(Float32Array.of(1, 2, 3, 4), [2, 2])];
    expect(() => computeNormalisation(v, 'percentile', { pLow: 90, pHigh: 10 })).toThrow(RangeError);
    expect(() => computeNormalisation(v, 'percentile', { pLow: -1, pHigh: 10 })).toThrow(RangeError);
    expect(() => computeNormalisation(v, 'percentile', { pLow: 1, pHigh: 101 })).toThrow(RangeError);
  });
});
