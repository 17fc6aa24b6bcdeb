import { describe, it, expect } from 'vitest';
import { Rng } from '../core/rng.js';
import { QuantileSketch, RunningMoments } from '../core/quantiles.js';
import { percentileOfSorted } from '../models/normalise.js';

/** Skewed data with a long tail and a spike: lognormal body, uniform background, repeated zeros. */
function randomData(n: number, seed: number): Float32Array {
  const rng = new Rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const u = rng.uniform();
    out[i] = u < 0.6 ? Math.exp(1 + 0.8 * rng.normal()) : u < 0.9 ? 100 * rng.uniform() : 0;
  }
  return out;
}

/** Fraction of `sorted` strictly below v, and at or below v. */
function rankRange(sorted: Float32Array, v: number): [number, number] {
  const lowerBound = (pred: (x: number) => boolean): number => {
    let lo = 0;
    let hi = sorted.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (pred(sorted[mid])) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  };
  return [lowerBound((x) => x < v) / sorted.length, lowerBound((x) => x <= v) / sorted.length];
}

/** Largest distance between a requested quantile and the true rank interval of the reported value. */
function worstRankError(sketch: QuantileSketch, exactSorted: Float32Array): number {
  let worst = 0;
  for (let i = 0; i <= 1000; i++) {
    const q = i / 1000;
    const [below, atOrBelow] = rankRange(exactSorted, sketch.quantile(q));
    const err = q < below ? below - q : q > atOrBelow ? q - atOrBelow : 0;
    worst = Math.max(worst, err);
  }
  return worst;
}

describe('QuantileSketch (uniform reservoir, DKW bound)', () => {
  const delta = 1e-4;

  it('stays within the stated rank error bound on random, sorted and reversed streams', () => {
    const n = 300_000;
    const data = randomData(n, 11);
    const exact = data.slice().sort();
    const streams = { random: data, sorted: exact, reversed: exact.slice().reverse() };
    for (const [kind, stream] of Object.entries(streams)) {
      const sketch = new QuantileSketch({ capacity: 4096, seed: 5 });
      // Fed in uneven blocks, as chunks arrive.
      for (let at = 0, b = 0; at < n; b++) {
        const len = 1000 + ((b * 7919) % 9000);
        sketch.add(stream.subarray(at, Math.min(n, at + len)));
        at += len;
      }
      expect(sketch.count).toBe(n);
      expect(sketch.size).toBe(4096);
      const bound = sketch.rankErrorBound(delta) + 1 / n;
      expect(bound).toBeGreaterThan(0.03);
      expect(bound).toBeLessThan(0.04);
      const worst = worstRankError(sketch, exact);
      expect(worst, `${kind} stream`).toBeLessThanOrEqual(bound);
      // A sample (not the first or last k values) of a sorted stream covers the whole range.
      expect(sketch.quantile(0.5)).toBeGreaterThan(exact[Math.floor(0.5 * n - bound * n)] - 1e-6);
    }
  });

  it('a merge of sketches of unequal streams obeys the bound for the union', () => {
    const a = randomData(200_000, 21);
    const b = randomData(50_000, 22).map((v) => v + 500); // disjoint range: a wrong mixing weight shows at once
    const sa = new QuantileSketch({ capacity: 4096, seed: 1 });
    const sb = new QuantileSketch({ capacity: 4096, seed: 2 });
    sa.add(a);
    sb.add(b);
    sa.merge(sb);
    expect(sa.count).toBe(250_000);
    const union = new Float32Array(250_000);
    union.set(a);
    union.set(b, a.length);
    union.sort();
    expect(worstRankError(sa, union)).toBeLessThanOrEqual(sa.rankErrorBound(delta) + 1 / union.length);
    // Keeps sampling uniformly after a merge.
    const c = randomData(250_000, 23).map((v) => v - 500);
    sa.add(c);
    const all = new Float32Array(500_000);
    all.set(union);
    all.set(c, union.length);
    all.sort();
    expect(worstRankError(sa, all)).toBeLessThanOrEqual(sa.rankErrorBound(delta) + 1 / all.length);
  });

  it('is exact (numpy interpolation) while everything fits, and counts non-finite values apart', () => {
    const data = randomData(5000, 31);
    const withBad = Float32Array.from([...data, NaN, Infinity, -Infinity]);
    const sketch = new QuantileSketch({ capacity: 8192 });
    sketch.add(withBad.subarray(0, 2000));
    const rest = new QuantileSketch({ capacity: 8192 });
    rest.add(withBad.subarray(2000));
    sketch.merge(rest);
    expect(sketch.nonFinite).toBe(3);
    expect(sketch.rankErrorBound()).toBe(0);
    const sorted = data.slice().sort();
    for (const p of [0, 2, 50, 99.8, 100]) expect(sketch.quantile(p / 100)).toBe(percentileOfSorted(sorted, p));
  });

  it('is reproducible with a seed', () => {
    const data = randomData(50_000, 41);
    const one = new QuantileSketch({ capacity: 1000, seed: 9 });
    const two = new QuantileSketch({ capacity: 1000, seed: 9 });
    one.add(data);
    two.add(data);
    expect(one.quantile(0.998)).toBe(two.quantile(0.998));
  });
});

describe('RunningMoments', () => {
  it('matches two-pass float64 mean and population std, also merged from parts', () => {
    const data = randomData(100_000, 51).map((v) => v + 1e4); // a large offset: naive sum-of-squares loses digits
    let sum = 0;
    for (const v of data) sum += v;
    const mean = sum / data.length;
    let sq = 0;
    for (const v of data) sq += (v - mean) ** 2;
    const std = Math.sqrt(sq / data.length);
    const whole = new RunningMoments();
    for (let at = 0; at < data.length; at += 3333) whole.add(data.subarray(at, at + 3333));
    const left = new RunningMoments();
    const right = new RunningMoments();
    left.add(data.subarray(0, 12345));
    right.add(data.subarray(12345));
    left.merge(right);
    for (const m of [whole, left]) {
      expect(m.count).toBe(data.length);
      expect(Math.abs(m.mean - mean) / mean).toBeLessThan(1e-12);
      expect(Math.abs(m.std - std) / std).toBeLessThan(1e-9);
      expect(m.min).toBe(Math.min(...data));
      expect(m.max).toBe(Math.max(...data));
    }
  });
});
