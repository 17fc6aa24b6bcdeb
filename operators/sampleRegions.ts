/**
 * Training patches from chunked arrays larger than memory: each step picks a few random
 * chunk-aligned regions (blocks of whole chunks), fetches their chunks through the shared byte-bounded
 * ChunkCache with bounded concurrency, and cuts several patches from each region, so every fetched
 * chunk serves many patches. Optionally skips background patches by an intensity threshold.
 * Paired sources (n2n, care) carry a target array of the input's shape: each patch's target is cut
 * at the same voxels from it (its own chunk grid, through the same cache), so the pair stays aligned.
 */
import { type OperatorFunction, concatMap, from, mergeAll } from 'rxjs';
import { InputError, UsageError } from '../core/errors.js';
import { Rng } from '../core/rng.js';
import type { Shape } from '../core/volume.js';
import { voxelCount } from '../core/volume.js';
import { normalise, type Normalisation } from '../models/normalise.js';
import type { ChunkedArrayReader } from '../storage/chunked.js';
import { ChunkCache, readRegionReflected } from '../storage/chunkCache.js';
import { mixSeed, type PatchSample } from './samplePatches.js';

/** A voxel box [start, end) per axis. */
export interface Box {
  start: number[];
  end: number[];
}

/** A YX or ZYX chunked array to sample from, optionally restricted to a box (e.g. without the validation slab). */
export interface ChunkedSource {
  reader: ChunkedArrayReader;
  name: string;
  /**
   * n2n / care: the paired target array (second noisy acquisition, or clean), the input's shape;
   * its chunk shape may differ. Every patch carries the target's values at the same voxels.
   */
  target?: ChunkedArrayReader;
  /** The target's name, for messages (default: `<name> (target)`). */
  targetName?: string;
  /** Default: the whole array. Chunk-aligned boxes keep training and validation chunks apart. */
  bounds?: Box;
}

export interface BackgroundFilter {
  /** Raw (not normalised) intensity: a patch whose statistic is below it is background. */
  threshold: number;
  /** The statistic: this percentile (0..100) of the patch; default: the patch mean. */
  percentile?: number;
  /**
   * Give up (InputError) when, after at least 200 patches drawn, fewer than this fraction were
   * foreground: the threshold is wrong for the data. Default 0.02.
   */
  minForegroundFraction?: number;
}

export interface RegionEvent {
  step: number;
  /** Region slot within the step (a slot draws another region when its region is all background). */
  slot: number;
  source: string;
  /** First chunk index per axis, and chunks per axis. */
  firstChunk: number[];
  chunkCounts: number[];
}

export interface RegionSamplingStats {
  regions: number;
  patchesDrawn: number;
  backgroundSkipped: number;
}

export interface SampleRegionsOptions {
  sources: readonly ChunkedSource[];
  cache: ChunkCache;
  /** YX or ZYX, voxels; same rank as every source. */
  patchShape: Shape;
  patchesPerStep: number;
  /** Patches cut from one region; default min(patchesPerStep, 8). */
  patchesPerRegion?: number;
  /** Region size in chunks per axis; default defaultRegionChunks (2 patches per axis, shrunk when large). */
  regionChunks?: number[];
  /** Chunk reads in flight at once; default 4. */
  readConcurrency?: number;
  normalisation: Normalisation;
  seed: number;
  background?: BackgroundFilter;
  onRegion?: (event: RegionEvent) => void;
  /** Filled in as sampling goes (for progress and tests). */
  stats?: RegionSamplingStats;
}

/** A region: a box of whole chunks (clipped to the source bounds) of one source. */
interface Region {
  source: number;
  firstChunk: number[];
  chunkCounts: number[];
  /** Voxel box of the region, inside the source bounds. */
  box: Box;
}

/** Per source: bounds, and per axis the candidate first chunks for a region of `chunkCounts` chunks. */
interface SourcePlan {
  bounds: Box;
  chunkCounts: number[];
  candidates: number[][];
  weight: number;
  /** Paired sources: per axis, the most target chunks a region's box touches (the target's grid may differ). */
  targetChunkCounts?: number[];
}

const REGION_SALT = 0x7265676e;
/** Patch draws per patch wanted before a region counts as background and the slot moves on. */
const DRAWS_PER_PATCH = 4;
const MAX_REGIONS_PER_SLOT = 64;
const MIN_DRAWS_BEFORE_GIVING_UP = 200;

/** Bounds of a source (default: the whole array), validated against its rank and the patch. */
export function sourceBounds(source: ChunkedSource, patchShape: readonly number[]): Box {
  const shape = source.reader.info.shape;
  if (shape.length !== 2 && shape.length !== 3) {
    throw new InputError(source.name, `has ${shape.length} axes [${shape.join(', ')}]; training needs a YX or ZYX array (choose a channel and time point)`);
  }
  if (shape.length !== patchShape.length) {
    throw new InputError(source.name, `is ${shape.length}D [${shape.join(', ')}] but the training patches are ${patchShape.length}D [${patchShape.join(', ')}]`);
  }
  if (source.target) checkPairShape(source.targetName ?? `${source.name} (target)`, source.target.info.shape, source.name, shape);
  const bounds = source.bounds ?? { start: shape.map(() => 0), end: [...shape] };
  shape.forEach((n, axis) => {
    const { start, end } = { start: bounds.start[axis], end: bounds.end[axis] };
    if (!(start >= 0 && end <= n && start < end)) throw new RangeError(`${source.name}: bounds [${bounds.start}]..[${bounds.end}] are outside the array [${shape}]`);
    if (end - start < patchShape[axis]) {
      throw new InputError(source.name, `image is ${shape.join('x')}, smaller than the training patch ${patchShape.join('x')}; use a smaller --patch`);
    }
  });
  return bounds;
}

/**
 * Inputs and targets pair voxel by voxel: a target of another shape is refused, naming the target
 * and both shapes (file and streamed pairs alike).
 */
export function checkPairShape(targetName: string, targetShape: readonly number[], inputName: string, inputShape: readonly number[]): void {
  if (targetShape.length !== inputShape.length || targetShape.some((s, a) => s !== inputShape[a])) {
    throw new InputError(targetName, `is ${targetShape.join('x')} but its input ${inputName} is ${inputShape.join('x')}: pairs must have the same shape`);
  }
}

/** Regions larger than this shrink (down to a floor per axis) unless their size is given. */
export const defaultMaxRegionBytes = 64 * 2 ** 20;

/**
 * Default region size in chunks per axis: enough chunks to span two patches (so a region yields
 * patches at many offsets and each chunk serves several patches). When that is more than
 * defaultMaxRegionBytes (big chunks, or thin ones such as one TIFF page per z), the axis with the
 * most chunks shrinks first, down to the fewest chunks that hold a patch with half a chunk to spare.
 */
export function defaultRegionChunks(chunks: readonly number[], patchShape: readonly number[]): number[] {
  const counts = chunks.map((c, a) => Math.max(1, Math.ceil((2 * patchShape[a]) / c)));
  const floor = chunks.map((c, a) => Math.max(1, Math.ceil((patchShape[a] + Math.floor(c / 2)) / c)));
  const bytes = (): number => 4 * voxelCount(counts) * voxelCount(chunks);
  while (bytes() > defaultMaxRegionBytes) {
    let axis = -1;
    counts.forEach((k, a) => {
      if (k > floor[a] && (axis < 0 || k > counts[axis])) axis = a;
    });
    if (axis < 0) break;
    counts[axis]--;
  }
  return counts;
}

function planSource(source: ChunkedSource, patchShape: readonly number[], regionChunks: readonly number[] | undefined): SourcePlan {
  const bounds = sourceBounds(source, patchShape);
  const { chunks } = source.reader.info;
  const chunkCounts: number[] = [];
  const candidates: number[][] = [];
  const wantedCounts = regionChunks ? [...regionChunks] : defaultRegionChunks(chunks, patchShape);
  chunks.forEach((chunk, axis) => {
    const [start, end] = [bounds.start[axis], bounds.end[axis]];
    const c0 = Math.floor(start / chunk);
    const c1 = Math.ceil(end / chunk);
    const wanted = wantedCounts[axis];
    // The fewest chunks >= wanted for which some region holds a whole patch (edge chunks may be clipped by the bounds).
    for (let k = Math.min(Math.max(1, wanted), c1 - c0); k <= c1 - c0; k++) {
      const ok: number[] = [];
      for (let r = c0; r + k <= c1; r++) {
        if (Math.min(end, (r + k) * chunk) - Math.max(start, r * chunk) >= patchShape[axis]) ok.push(r);
      }
      if (ok.length > 0) {
        chunkCounts.push(k);
        candidates.push(ok);
        return;
      }
    }
    throw new Error(`unreachable: bounds hold a patch along axis ${axis}`);
  });
  const plan: SourcePlan = { bounds, chunkCounts, candidates, weight: voxelCount(bounds.end.map((e, a) => e - bounds.start[a])) };
  if (source.target) {
    const targetChunks = source.target.info.chunks;
    // Exact per-axis maxima over the candidate regions (axes are drawn independently, so the product is the maximum too).
    plan.targetChunkCounts = chunks.map((chunk, axis) =>
      candidates[axis].reduce((most, r) => {
        const box = regionAxisBox(r, chunkCounts[axis], chunk, bounds, axis);
        return Math.max(most, coveringChunks(box.start, box.end, targetChunks[axis]).count);
      }, 1),
    );
  }
  return plan;
}

/** Voxel extent along `axis` of a region whose first chunk is `first`, clipped to the bounds. */
function regionAxisBox(first: number, count: number, chunk: number, bounds: Box, axis: number): { start: number; end: number } {
  return { start: Math.max(bounds.start[axis], first * chunk), end: Math.min(bounds.end[axis], (first + count) * chunk) };
}

/** The chunks (first index, count) of a grid of side `chunk` that hold voxels start..end-1. */
function coveringChunks(start: number, end: number, chunk: number): { first: number; count: number } {
  const first = Math.floor(start / chunk);
  return { first, count: Math.floor((end - 1) / chunk) - first + 1 };
}

/**
 * Float32 bytes of the chunks of one region of `source` (what the cache must hold per region in
 * flight): the input's region chunks, plus for a paired source the most target chunks a region's
 * box can touch in the target's own grid.
 */
export function regionBytes(source: ChunkedSource, patchShape: readonly number[], regionChunks?: readonly number[]): number {
  const plan = planSource(source, patchShape, regionChunks);
  const inputBytes = 4 * voxelCount(plan.chunkCounts) * voxelCount(source.reader.info.chunks);
  const targetBytes = source.target && plan.targetChunkCounts ? 4 * voxelCount(plan.targetChunkCounts) * voxelCount(source.target.info.chunks) : 0;
  return inputBytes + targetBytes;
}

/** Runs `work` over `items` with at most `limit` in flight; rejects on the first failure. */
export async function forEachLimited<T>(items: readonly T[], limit: number, work: (item: T) => Promise<unknown>): Promise<void> {
  let next = 0;
  const lane = async (): Promise<void> => {
    while (next < items.length) await work(items[next++]);
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, lane));
}

/** Every chunk index of the block firstChunk .. firstChunk + chunkCounts - 1, C order. */
function blockChunkIndices(firstChunk: readonly number[], chunkCounts: readonly number[]): number[][] {
  const out: number[][] = [];
  const walk = (axis: number, prefix: number[]): void => {
    if (axis === chunkCounts.length) {
      out.push(prefix);
      return;
    }
    for (let i = 0; i < chunkCounts[axis]; i++) walk(axis + 1, [...prefix, firstChunk[axis] + i]);
  };
  walk(0, []);
  return out;
}

/** The target chunks holding a region's box (the target's grid need not match the input's). */
function targetChunkIndices(box: Box, targetChunks: readonly number[]): number[][] {
  const covering = targetChunks.map((chunk, axis) => coveringChunks(box.start[axis], box.end[axis], chunk));
  return blockChunkIndices(
    covering.map((c) => c.first),
    covering.map((c) => c.count),
  );
}

function patchStatistic(values: Float32Array, percentile: number | undefined): number {
  if (percentile === undefined) {
    let sum = 0;
    for (let i = 0; i < values.length; i++) sum += values[i];
    return sum / values.length;
  }
  const sorted = values.slice().sort();
  const position = (percentile / 100) * (sorted.length - 1);
  const below = Math.floor(position);
  const above = Math.min(below + 1, sorted.length - 1);
  return sorted[below] + (position - below) * (sorted[above] - sorted[below]);
}

/**
 * step -> the step's `patchesPerStep` patches, in index order, all decided by (seed, step): region
 * slot j draws from Rng(mix(seed, step, j)) and patch i gets Rng(mix(seed, step, i)) for its later
 * augmentation and masking (as samplePatches), so a resumed run draws what an uninterrupted one would.
 * Returns a function that samples one step (used for the operator and for fixed validation sets).
 */
export function regionStepSampler(opts: SampleRegionsOptions): (step: number) => Promise<PatchSample[]> {
  if (opts.sources.length === 0) throw new UsageError('training needs at least one source');
  const patchShape = [...opts.patchShape];
  const plans = opts.sources.map((s) => planSource(s, patchShape, opts.regionChunks));
  const totalWeight = plans.reduce((a, p) => a + p.weight, 0);
  const perRegion = Math.max(1, Math.min(opts.patchesPerStep, opts.patchesPerRegion ?? 8));
  const slots = Math.ceil(opts.patchesPerStep / perRegion);
  const concurrency = opts.readConcurrency ?? 4;
  const stats = opts.stats ?? { regions: 0, patchesDrawn: 0, backgroundSkipped: 0 };
  const background = opts.background;
  const minForeground = background?.minForegroundFraction ?? 0.02;
  const names = opts.sources.map((s) => s.name).join(', ');

  const drawRegion = (rng: Rng): Region => {
    let u = rng.uniform() * totalWeight;
    let source = 0;
    while (source < plans.length - 1 && u >= plans[source].weight) u -= plans[source++].weight;
    const plan = plans[source];
    const chunks = opts.sources[source].reader.info.chunks;
    const firstChunk = plan.candidates.map((c) => c[rng.int(c.length)]);
    const axes = firstChunk.map((c, a) => regionAxisBox(c, plan.chunkCounts[a], chunks[a], plan.bounds, a));
    return { source, firstChunk, chunkCounts: plan.chunkCounts, box: { start: axes.map((b) => b.start), end: axes.map((b) => b.end) } };
  };
  const fetchRegions = (step: number, regions: Array<{ slot: number; region: Region }>): Promise<void> => {
    const reads: Array<{ reader: ChunkedArrayReader; index: number[] }> = [];
    for (const { slot, region } of regions) {
      stats.regions++;
      const source = opts.sources[region.source];
      opts.onRegion?.({ step, slot, source: source.name, firstChunk: region.firstChunk, chunkCounts: region.chunkCounts });
      for (const index of blockChunkIndices(region.firstChunk, region.chunkCounts)) reads.push({ reader: source.reader, index });
      // The target's chunks under the same box, into the same cache: regionBytes counts them, so one
      // step's regions of both arrays fit the cache together and the patches below are all hits.
      if (source.target) for (const index of targetChunkIndices(region.box, source.target.info.chunks)) reads.push({ reader: source.target, index });
    }
    return forEachLimited(reads, concurrency, (r) => opts.cache.get(r.reader, r.index));
  };

  return async (step: number): Promise<PatchSample[]> => {
    const slotRngs = Array.from({ length: slots }, (_, j) => new Rng(mixSeed(opts.seed ^ REGION_SALT, step, j)));
    const regions = slotRngs.map((rng) => drawRegion(rng));
    // All of the step's regions at once: the reads overlap each other (and the model's current step).
    await fetchRegions(
      step,
      regions.map((region, slot) => ({ slot, region })),
    );
    const patches: PatchSample[] = [];
    for (let slot = 0; slot < slots; slot++) {
      const rng = slotRngs[slot];
      let region = regions[slot];
      const quota = Math.min(perRegion, opts.patchesPerStep - slot * perRegion);
      let got = 0;
      for (let regionsTried = 1; got < quota; regionsTried++) {
        const source = opts.sources[region.source];
        for (let draws = 0; got < quota && draws < DRAWS_PER_PATCH * quota; draws++) {
          const origin = region.box.start.map((s, a) => s + rng.int(region.box.end[a] - s - patchShape[a] + 1));
          const raw = await readRegionReflected(source.reader, opts.cache, origin, patchShape);
          stats.patchesDrawn++;
          if (background && patchStatistic(raw, background.percentile) < background.threshold) {
            stats.backgroundSkipped++;
            const foreground = stats.patchesDrawn - stats.backgroundSkipped;
            if (stats.patchesDrawn >= MIN_DRAWS_BEFORE_GIVING_UP && foreground < minForeground * stats.patchesDrawn) {
              throw new InputError(
                names,
                `${stats.backgroundSkipped} of ${stats.patchesDrawn} patches drawn are background (below the threshold ${background.threshold}); ` +
                  'lower the background threshold or train without it',
              );
            }
            continue;
          }
          const index = slot * perRegion + got;
          // The pair's target: the same voxels (the background decision is the input's), normalised
          // with the inputs' statistics as in-memory pairs are (operators/samplePatches.ts).
          const target = source.target ? normalise(await readRegionReflected(source.target, opts.cache, origin, patchShape), opts.normalisation) : undefined;
          patches.push({
            step,
            index,
            data: normalise(raw, opts.normalisation),
            ...(target ? { target } : {}),
            shape: opts.patchShape,
            rng: new Rng(mixSeed(opts.seed, step, index)),
          });
          got++;
        }
        if (got < quota) {
          if (regionsTried >= MAX_REGIONS_PER_SLOT) {
            throw new InputError(names, `${regionsTried} regions in a row held no patch above the background threshold ${background?.threshold}; lower it or train without it`);
          }
          region = drawRegion(rng);
          await fetchRegions(step, [{ slot, region }]);
        }
      }
    }
    return patches;
  };
}

/**
 * Operator: step index -> that step's patches (index order), sampled from chunk-aligned regions.
 * Steps are handled one at a time (concatMap): batches stay whole and in order, and the reads of the
 * steps the producer runs ahead (see pipeline/stepSource.ts) overlap with the model's work.
 */
export function sampleRegions(opts: SampleRegionsOptions): OperatorFunction<number, PatchSample> {
  const sampleStep = regionStepSampler(opts);
  return concatMap((step: number) => from(sampleStep(step)).pipe(mergeAll()));
}
