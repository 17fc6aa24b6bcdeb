/**
 * Streaming statistics for data that never sit in memory whole: exact running moments (Welford /
 * Chan, float64) and approximate quantiles from a mergeable fixed-size uniform reservoir.
 *
 * Error bound of the quantile sketch (what `rankErrorBound` returns): the reservoir is a uniform
 * random sample without replacement of k = min(capacity, n) of the n values seen. By the
 * Dvoretzky-Kiefer-Wolfowitz inequality (Massart's constant; it holds for sampling without
 * replacement too, which only concentrates more), with probability at least 1 - delta the sample's
 * empirical CDF is within eps = sqrt(ln(2 / delta) / (2 k)) of the stream's at EVERY value at once.
 * So the value reported for quantile q has a true normalised rank in [q - eps, q + eps] (plus the
 * 1/n granularity of ranks), for all q simultaneously. When n <= capacity the sketch holds every
 * value and quantiles are exact (numpy's linear interpolation, as models/normalise.ts).
 * Defaults: capacity 2^20 values (4 MiB), delta 1e-3 -> eps = 0.0019 (0.19 percentile points).
 *
 * The bound is about the values fed in. Fed a random sample of chunks rather than a whole volume,
 * the result estimates the volume's quantiles with an extra (cluster) sampling error that depends
 * on how much chunks differ; the normalisation it feeds only has to be stable, not exact.
 */
import { InputError } from './errors.js';
import { Rng } from './rng.js';

/** Count, mean and variance in float64, one value at a time, mergeable (Chan et al.). */
export class RunningMoments {
  count = 0;
  mean = 0;
  /** Sum of squared deviations from the mean. */
  m2 = 0;
  min = Infinity;
  max = -Infinity;

  add(values: ArrayLike<number>): void {
    // Chunk-wise: exact mean/M2 of the block in float64, then one Chan merge (fewer divisions than per-value Welford).
    const n = values.length;
    if (n === 0) return;
    let sum = 0;
    let lo = Infinity;
    let hi = -Infinity;
    for (let i = 0; i < n; i++) {
      const v = values[i];
      sum += v;
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    const blockMean = sum / n;
    let squares = 0;
    for (let i = 0; i < n; i++) {
      const d = values[i] - blockMean;
      squares += d * d;
    }
    this.mergeParts(n, blockMean, squares, lo, hi);
  }

  merge(other: RunningMoments): void {
    this.mergeParts(other.count, other.mean, other.m2, other.min, other.max);
  }

  /** Population variance (divides by n, like numpy's default and models/normalise.ts). */
  get variance(): number {
    return this.count > 0 ? this.m2 / this.count : NaN;
  }

  get std(): number {
    return Math.sqrt(this.variance);
  }

  private mergeParts(n: number, mean: number, m2: number, lo: number, hi: number): void {
    if (n === 0) return;
    const total = this.count + n;
    const delta = mean - this.mean;
    this.mean += (delta * n) / total;
    this.m2 += m2 + (delta * delta * this.count * n) / total;
    this.count = total;
    if (lo < this.min) this.min = lo;
    if (hi > this.max) this.max = hi;
  }
}

export interface QuantileSketchOptions {
  /** Values kept; memory is 4 bytes each. Default 2^20. */
  capacity?: number;
  seed?: number;
}

export const defaultSketchCapacity = 1 << 20;

/**
 * Uniform reservoir (Li's Algorithm L: the number of values to skip is drawn directly, so the cost
 * per value is a comparison, not a random draw). Non-finite values are counted, not kept.
 */
export class QuantileSketch {
  readonly capacity: number;
  /** Finite values seen. */
  count = 0;
  /** NaN / infinite values seen (and skipped). */
  nonFinite = 0;
  private readonly rng: Rng;
  private sample: Float32Array;
  private held = 0;
  /** Algorithm L state: index (in the finite stream) of the next value to take, and W. */
  private nextTake = 0;
  private w = 1;
  private sorted: Float32Array | null = null;
  /**
   * Algorithm L's skip state is only valid for a stream it followed from the start; after a merge
   * the sketch draws per value instead (Algorithm R), which is correct at any position.
   */
  private perValueDraws = false;

  constructor(opts: QuantileSketchOptions = {}) {
    const capacity = opts.capacity ?? defaultSketchCapacity;
    if (!(Number.isInteger(capacity) && capacity >= 1)) throw new RangeError(`sketch capacity must be a positive integer, got ${capacity}`);
    this.capacity = capacity;
    this.rng = new Rng(opts.seed ?? 0x71756e74);
    this.sample = new Float32Array(Math.min(capacity, 1024));
  }

  /** Values currently held (min(count, capacity)). */
  get size(): number {
    return this.held;
  }

  add(values: ArrayLike<number>): void {
    this.sorted = null;
    for (let i = 0; i < values.length; i++) {
      const v = values[i];
      if (!Number.isFinite(v)) {
        this.nonFinite++;
        continue;
      }
      const position = this.count++;
      if (this.held < this.capacity) {
        this.push(v);
        if (this.held === this.capacity) this.startSkipping(position);
      } else if (this.perValueDraws) {
        // Algorithm R: value number position+1 enters with probability k / (position + 1).
        if (this.rng.uniform() * (position + 1) < this.capacity) this.sample[this.rng.int(this.capacity)] = v;
      } else if (position === this.nextTake) {
        this.sample[this.rng.int(this.capacity)] = v;
        this.advanceSkip(position);
      }
    }
  }

  /**
   * Merges another sketch's sample so this one is a uniform sample of both streams together:
   * k draws without replacement where each comes from a stream with probability proportional to
   * the values of that stream not drawn yet (hypergeometric), each draw a random element of that
   * stream's (uniform) sample. Afterwards this sketch keeps reservoir sampling correctly.
   */
  merge(other: QuantileSketch): void {
    this.sorted = null;
    this.nonFinite += other.nonFinite;
    if (other.count === 0) return;
    if (this.count + other.count <= this.capacity) {
      for (let i = 0; i < other.held; i++) this.push(other.sample[i]);
      this.count += other.count;
      this.perValueDraws = true;
      return;
    }
    const k = this.capacity;
    const mine = this.sample.slice(0, this.held);
    const theirs = other.sample.slice(0, other.held);
    let restMine = this.count;
    let restTheirs = other.count;
    let leftMine = mine.length;
    let leftTheirs = theirs.length;
    const merged = new Float32Array(k);
    for (let i = 0; i < k; i++) {
      const fromMine = this.rng.uniform() * (restMine + restTheirs) < restMine;
      // Partial Fisher-Yates: take a random not-yet-taken element of the chosen sample.
      const [arr, left] = fromMine ? [mine, leftMine] : [theirs, leftTheirs];
      const j = this.rng.int(left);
      merged[i] = arr[j];
      arr[j] = arr[left - 1];
      if (fromMine) {
        restMine--;
        leftMine--;
      } else {
        restTheirs--;
        leftTheirs--;
      }
    }
    this.sample = merged;
    this.held = k;
    this.count += other.count;
    this.perValueDraws = true;
  }

  /**
   * Quantile q in [0, 1] of the values seen (numpy linear interpolation over the sample).
   * InputError if nothing finite was seen.
   */
  quantile(q: number): number {
    if (!(q >= 0 && q <= 1)) throw new RangeError(`quantile must be in [0, 1], got ${q}`);
    if (this.held === 0) throw new InputError('normalisation', 'no finite values to compute quantiles from');
    if (!this.sorted) this.sorted = this.sample.slice(0, this.held).sort();
    const s = this.sorted;
    const position = q * (s.length - 1);
    const below = Math.floor(position);
    const above = Math.min(below + 1, s.length - 1);
    return s[below] + (position - below) * (s[above] - s[below]);
  }

  /** eps of the DKW bound (see the file comment); 0 when every value is held. */
  rankErrorBound(delta = 1e-3): number {
    if (this.count <= this.capacity) return 0;
    return Math.sqrt(Math.log(2 / delta) / (2 * this.held));
  }

  private push(v: number): void {
    if (this.held === this.sample.length) {
      const grown = new Float32Array(Math.min(this.capacity, this.sample.length * 2));
      grown.set(this.sample);
      this.sample = grown;
    }
    this.sample[this.held++] = v;
  }

  private startSkipping(position: number): void {
    this.w = Math.exp(Math.log(this.openUniform()) / this.capacity);
    this.advanceSkip(position);
  }

  private advanceSkip(position: number): void {
    const skip = Math.floor(Math.log(this.openUniform()) / Math.log(1 - this.w));
    this.nextTake = position + 1 + (Number.isFinite(skip) ? skip : Number.MAX_SAFE_INTEGER);
    this.w *= Math.exp(Math.log(this.openUniform()) / this.capacity);
  }

  /** Uniform in (0, 1): logs stay finite. */
  private openUniform(): number {
    let u = 0;
    while (u === 0) u = this.rng.uniform();
    return u;
  }
}
