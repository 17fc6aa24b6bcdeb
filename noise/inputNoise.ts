/**
 * The noise of each denoised input, recorded beside its output: `blindspot denoise` fits the input's
 * noise-level function (noise/nlf.ts) and writes `<output file>.noise.json` next to the output, so the
 * noise of every image travels with the result (the model folder carries the training images' NLFs).
 * Streamed chunked inputs (OME-Zarr, S3) are fitted from a seeded sample of chunks
 * (fitChunkedInputNoise), never read whole.
 */
import path from 'node:path';
import { OutputError } from '../core/errors.js';
import { Rng } from '../core/rng.js';
import { chunkGrid, type ChunkedArrayReader } from '../storage/chunked.js';
import { ChunkCache, readRegionReflected } from '../storage/chunkCache.js';
import { writeFileAtomic } from '../storage/common.js';
import { fitNlf, nlfVariance, type FitOptions, type NlfRecord } from './nlf.js';
import { PAIR_STRIDE, quantileOfSorted, sampleNoise, type NoiseSample } from './sample.js';

/** What `<output>.noise.json` holds. Intensities in input units; sigma in input units (standard deviation). */
export interface InputNoiseRecord {
  format: 'blindspot-input-noise';
  version: 1;
  /** The input as the user named it (file name or URL). */
  input: string;
  /** The output file's base name (the sidecar sits beside it). */
  output: string;
  /** 'nlf': fitted noise-level function; 'global': constant estimate (constant or tiny image). */
  method: NlfRecord['method'];
  /** Residual filter of the fit (noise/residualFilters.ts). */
  residualFilter: NlfRecord['residualFilter'];
  /** Chunked inputs: the chunks sampled; file inputs: the whole image. */
  sampled: { kind: 'whole-image' } | { kind: 'chunks'; chunks: number[][]; seed: number };
  /** Noise standard deviation at the median intensity. */
  sigma: number;
  medianIntensity: number;
  /** Poisson-Gaussian summary var = a x + b. */
  a: number;
  b: number;
  /** sigma at intensity percentiles 1, 25, 50, 75, 99. */
  percentiles: NlfRecord['percentiles'];
  /** The NLF sampled at 33 intensities from the 1st to the 99th percentile. */
  curve: { intensity: number; sigma: number }[];
  warnings: string[];
  /** The full fit (network weights, bins), for `--noise-model` and plots. */
  nlf: NlfRecord;
}

/** `<output file name>.noise.json` beside the output. */
export function noiseSidecarPath(output: string): string {
  return `${output}.noise.json`;
}

/** The sidecar record of one fitted input. */
export function inputNoiseRecord(nlf: NlfRecord, input: string, output: string, sampled: InputNoiseRecord['sampled'] = { kind: 'whole-image' }): InputNoiseRecord {
  const p1 = nlf.percentiles.find((p) => p.p === 1)?.intensity ?? nlf.medianIntensity;
  const p99 = nlf.percentiles.find((p) => p.p === 99)?.intensity ?? nlf.medianIntensity;
  const points = 33;
  const curve = Array.from({ length: points }, (_, k) => {
    const intensity = p1 + ((p99 - p1) * k) / (points - 1);
    return { intensity, sigma: Math.sqrt(Math.max(0, nlfVariance(nlf, intensity))) };
  });
  return {
    format: 'blindspot-input-noise',
    version: 1,
    input,
    output: path.basename(output),
    method: nlf.method,
    residualFilter: nlf.residualFilter,
    sampled,
    sigma: nlf.sigma,
    medianIntensity: nlf.medianIntensity,
    a: nlf.a,
    b: nlf.b,
    percentiles: nlf.percentiles,
    curve,
    warnings: nlf.warnings,
    nlf,
  };
}

/**
 * Writes the sidecar atomically (temp file + link/rename). Without `overwrite` an existing sidecar is
 * refused (OutputError), never replaced: the same rule as for outputs.
 */
export async function writeNoiseSidecar(file: string, record: InputNoiseRecord, overwrite = false): Promise<void> {
  await writeFileAtomic(file, new TextEncoder().encode(JSON.stringify(record, null, 1) + '\n'), overwrite);
}

export interface ChunkedNoiseOptions {
  /** Chunks read (at most; fewer when the array has fewer); default 4. */
  sampleBlocks?: number;
  /** Seed of the chunk choice, the pixel sampling and the fit; default 1. */
  seed?: number;
  /** Pixels sampled in all (split between the chunks); default 200 000. */
  maxSamples?: number;
  fit?: Omit<FitOptions, 'onProgress' | 'seed'>;
}

export interface ChunkedNoiseFit {
  nlf: NlfRecord;
  /** Indices of the chunks read. */
  chunks: number[][];
  seed: number;
}

/**
 * Fits the noise of a chunked array from a seeded sample of a few of its chunks (each read whole,
 * cropped to the array): per chunk the same pixel sample as for a file (noise/sample.ts), then one
 * fit of all samples together. A YX or ZYX array (a ZYX chunk is fitted slice by slice). Memory: one
 * chunk at a time plus the pixel samples.
 */
export async function fitChunkedInputNoise(reader: ChunkedArrayReader, opts: ChunkedNoiseOptions = {}): Promise<ChunkedNoiseFit> {
  const { info } = reader;
  const seed = opts.seed ?? 1;
  const rng = new Rng(seed);
  const grid = chunkGrid(info);
  const total = grid.reduce((n, g) => n * g, 1);
  const wanted = Math.max(1, Math.min(opts.sampleBlocks ?? 4, total));
  // Distinct chunks, chosen by a seeded partial shuffle of the flat chunk indices.
  const flat = new Set<number>();
  while (flat.size < wanted) flat.add(rng.int(total));
  const chunks = [...flat].sort((p, q) => p - q).map((k) => {
    const index: number[] = new Array(grid.length);
    for (let axis = grid.length - 1; axis >= 0; axis--) {
      index[axis] = k % grid[axis];
      k = Math.floor(k / grid[axis]);
    }
    return index;
  });
  const maxSamples = opts.maxSamples ?? 200_000;
  const samples: NoiseSample[] = [];
  const values: number[] = [];
  for (const index of chunks) {
    // The chunk's part inside the array (edge chunks are padded), read by the one region reader; nothing kept.
    const origin = index.map((c, axis) => c * info.chunks[axis]);
    const shape = origin.map((o, axis) => Math.min(info.chunks[axis], info.shape[axis] - o));
    const data = await readRegionReflected(reader, new ChunkCache(0), origin, shape);
    const image = { data, shape: shape.length === 3 && shape[0] === 1 ? shape.slice(1) : shape };
    const stride = Math.max(1, Math.floor(data.length / Math.ceil(200_000 / chunks.length)));
    for (let i = 0; i < data.length; i += stride) if (Number.isFinite(data[i])) values.push(data[i]);
    samples.push(sampleNoise({ name: `${info.url} chunk [${index.join(', ')}]`, ...image, sampleType: info.dtype }, { maxSamples: Math.ceil(maxSamples / chunks.length), seed: rng.nextUint32() }));
  }
  const merged = mergeSamples(info.url, samples, values);
  return { nlf: fitNlf(merged, { ...opts.fit, seed }), chunks, seed };
}

/** One sample from several: pairs concatenated (textures rescaled to one screen), percentiles from `values`. */
function mergeSamples(name: string, samples: readonly NoiseSample[], values: number[]): NoiseSample {
  const usable = samples.filter((s) => s.fallback === null);
  const warnings = [...new Set(samples.flatMap((s) => s.warnings))];
  const sorted = Float32Array.from(values).sort();
  const percentiles = [1, 25, 50, 75, 99].map((p) => ({ p, intensity: quantileOfSorted(sorted, p) }));
  const medianIntensity = quantileOfSorted(sorted, 50);
  const excludedPixels = {
    clipped: samples.reduce((n, s) => n + s.excludedPixels.clipped, 0),
    nonFinite: samples.reduce((n, s) => n + s.excludedPixels.nonFinite, 0),
  };
  if (usable.length === 0) {
    // Every chunk constant or tiny: the first chunk's fallback stands for the array.
    const first = samples[0];
    return { ...first, name, percentiles, medianIntensity, excludedPixels, warnings };
  }
  const textureLimit = usable[0].textureLimit;
  const length = usable.reduce((n, s) => n + s.pairs.length, 0);
  const pairs = new Float32Array(length);
  let offset = 0;
  for (const s of usable) {
    const rescale = textureLimit / s.textureLimit;
    for (let j = 0; j < s.pairs.length; j += PAIR_STRIDE) {
      pairs[offset + j] = s.pairs[j];
      pairs[offset + j + 1] = s.pairs[j + 1];
      pairs[offset + j + 2] = s.pairs[j + 2] * rescale;
    }
    offset += s.pairs.length;
  }
  // Each chunk picks its own residual filter; the record names the one most chunks used.
  const filterCounts = new Map<NoiseSample['residualFilter'], number>();
  for (const s of usable) filterCounts.set(s.residualFilter, (filterCounts.get(s.residualFilter) ?? 0) + 1);
  const residualFilter = [...filterCounts.entries()].sort((p, q) => q[1] - p[1])[0][0];
  return {
    name,
    pairs,
    residualKind: usable[0].residualKind,
    residualFilter,
    textureLimit,
    medianIntensity,
    percentiles,
    usablePixels: usable.reduce((n, s) => n + s.usablePixels, 0),
    excludedPixels,
    warnings,
    fallback: null,
  };
}

/** Refuses (OutputError) sidecars that exist already, unless `overwrite`: checked before any work, like outputs. */
export async function assertSidecarsWritable(outputs: readonly string[], overwrite: boolean, exists: (file: string) => Promise<boolean>): Promise<void> {
  if (overwrite) return;
  for (const output of outputs) {
    const sidecar = noiseSidecarPath(output);
    if (await exists(sidecar)) throw new OutputError(sidecar, 'exists already; pass --overwrite to replace it');
  }
}
