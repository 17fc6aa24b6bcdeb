/**
 * The data side of training: reading and pairing inputs with their targets (one pairing rule for
 * files and streams), holding out validation data, the fixed validation batches, and the streamed
 * patch source with its memory bound. The loop (pipeline/train.ts) consumes what this prepares.
 */
import { type OperatorFunction } from 'rxjs';
import { InputError, UsageError } from '../core/errors.js';
import { Rng } from '../core/rng.js';
import type { Shape, Volume } from '../core/volume.js';
import { normalise, type Normalisation } from '../models/normalise.js';
import { randomPatch } from '../models/patches.js';
import type { MethodPatch, PatchPreparation, PreparedPatch, ValidationBatch } from '../methods/method.js';
import { mixSeed, randomPatchPair, type PatchSample } from '../operators/samplePatches.js';
import { regionBytes, regionStepSampler, sampleRegions, type ChunkedSource, type RegionSamplingStats, checkPairShape } from '../operators/sampleRegions.js';
import { sampleNormalisation, type SampledNormalisation } from './sampleNormalisation.js';
import { ChunkCache } from '../storage/chunkCache.js';
import { defaultSketchCapacity } from '../core/quantiles.js';
import { readImage } from '../storage/index.js';
import type { NamedSource, NamedVolume, StreamingTrainSettings, TrainEvent } from './trainOptions.js';

/** A method's patch -> (input, target, mask) (Method.preparePatch). */
export function preparePatch(p: MethodPatch, prep: PatchPreparation): PreparedPatch {
  return prep.method.preparePatch(p, prep);
}

/** A validation patch: prepared by the method's own validation when it has one (Method.validation). */
export function prepareValidationPatch(p: MethodPatch, prep: PatchPreparation): PreparedPatch {
  return (prep.method.validation?.preparePatch ?? prep.method.preparePatch)(p, prep);
}

/**
 * The one pairing rule of n2n / care, for files and streamed sources alike: inputs and targets each
 * sorted by name (numeric-aware), the i-th of each a pair. Different counts: InputError naming the
 * first input or target left without a partner. Pairs come in sorted order.
 */
export function pairByName<I, T>(inputs: readonly I[], targets: readonly T[], inputName: (input: I) => string, targetName: (target: T) => string): Array<{ input: I; target: T }> {
  const byName = (a: string, b: string): number => a.localeCompare(b, undefined, { numeric: true });
  const sortedInputs = [...inputs].sort((a, b) => byName(inputName(a), inputName(b)));
  const sortedTargets = [...targets].sort((a, b) => byName(targetName(a), targetName(b)));
  if (sortedTargets.length !== sortedInputs.length) {
    const unpaired = sortedTargets.length > sortedInputs.length ? targetName(sortedTargets[sortedInputs.length]) : inputName(sortedInputs[sortedTargets.length]);
    throw new InputError(unpaired, `has no partner: ${sortedInputs.length} input(s) but ${sortedTargets.length} --targets; inputs and targets are paired by sorted name`);
  }
  return sortedInputs.map((input, i) => ({ input, target: sortedTargets[i] }));
}

/**
 * Reads the target files and pairs them with the inputs (pairByName): same count, same shapes, else
 * an error naming the file concerned.
 */
export async function attachTargets(named: NamedVolume[], targetFiles: string[]): Promise<void> {
  for (const { input, target: file } of pairByName(named, targetFiles, (n) => n.name, (f) => f)) {
    const target = await readImage(file);
    checkPairShape(file, target.shape, input.name, input.volume.shape);
    input.target = target;
    input.targetName = file;
  }
}

/** Streamed sources with their targets attached (pairByName), in the sources' given order; shapes are checked by sourceBounds. */
export function pairSources(sources: readonly NamedSource[], targets: readonly NamedSource[]): NamedSource[] {
  const partner = new Map(pairByName(sources, targets, (s) => s.name, (t) => t.name).map(({ input, target }) => [input, target]));
  return sources.map((s) => ({ ...s, target: partner.get(s)!.reader, targetName: partner.get(s)!.name }));
}

export async function readInputs(files: string[]): Promise<NamedVolume[]> {
  const out: NamedVolume[] = [];
  for (const file of files) out.push({ volume: await readImage(file), name: file });
  return out;
}

export function inferDims(named: NamedVolume[]): 2 | 3 {
  const dims = new Set(named.map((n) => n.volume.shape.length));
  if (dims.size > 1) {
    const first3 = named.find((n) => n.volume.shape.length === 3)!;
    throw new InputError(first3.name, 'is a 3D stack while other inputs are 2D images: train 2D and 3D models separately');
  }
  return named[0].volume.shape.length === 3 ? 3 : 2;
}

export function validatePatchShape(patch: number[], dims: 2 | 3, multiple: number): void {
  if (patch.length !== dims) throw new UsageError(`--patch needs ${dims} sizes for ${dims}D data (got ${patch.join('x')})`);
  for (const s of patch) {
    if (!Number.isInteger(s) || s <= 0 || s % multiple !== 0) {
      throw new UsageError(`--patch sizes must be positive multiples of ${multiple} (2^depth) for this network, got ${patch.join('x')}`);
    }
  }
}

/**
 * Held-out data for validation and best-model selection: whole images when there are several,
 * else a slab at the end of the slowest axis that fits patches (so no validation pixel is trained on).
 */
export function splitForValidation(named: NamedVolume[], patchShape: number[], fraction: number): { train: NamedVolume[]; validation: NamedVolume[] } {
  if (fraction <= 0) return { train: named, validation: named };
  if (named.length >= 2) {
    const nVal = Math.max(1, Math.round(named.length * fraction));
    return { train: named.slice(0, named.length - nVal), validation: named.slice(named.length - nVal) };
  }
  const { volume, name, target, targetName } = named[0];
  const axis = 0;
  const size = volume.shape[axis];
  const valSize = Math.max(patchShape[axis], Math.round(size * fraction));
  if (size - valSize < patchShape[axis]) {
    // Too small to split: validate on the training image (still tracks convergence, not generalisation).
    return { train: named, validation: named };
  }
  const paired = (start: number, end: number): Pick<NamedVolume, 'target' | 'targetName'> => (target ? { target: sliceAxis0(target, start, end), targetName } : {});
  return {
    train: [{ volume: sliceAxis0(volume, 0, size - valSize), name, ...paired(0, size - valSize) }],
    validation: [{ volume: sliceAxis0(volume, size - valSize, size), name: `${name} (validation slab)`, ...paired(size - valSize, size) }],
  };
}

function sliceAxis0(volume: Volume, start: number, end: number): Volume {
  const plane = volume.data.length / volume.shape[0];
  const shape = [end - start, ...volume.shape.slice(1)] as unknown as Shape;
  return { data: volume.data.subarray(start * plane, end * plane), shape, sampleType: volume.sampleType };
}

/** Where training patches and validation batches come from: in-memory volumes or streamed sources. */
export interface TrainingData {
  trainNames: string[];
  validationNames: string[];
  normalisation: Normalisation;
  /** Step index -> that step's normalised patches, in index order. */
  patches: OperatorFunction<number, PatchSample>;
  valBatches: ValidationBatch[];
  /** Streaming only: the chunk cache and region counters (for progress and tests). */
  cache?: ChunkCache;
  regionStats?: RegionSamplingStats;
}

export function inferSourceDims(sources: NamedSource[]): 2 | 3 {
  for (const s of sources) {
    const rank = s.reader.info.shape.length;
    if (rank !== 2 && rank !== 3) {
      throw new InputError(s.name, `has ${rank} axes [${s.reader.info.shape.join(', ')}]; training needs a YX or ZYX array (choose a channel and time point)`);
    }
  }
  const dims = new Set(sources.map((s) => s.reader.info.shape.length));
  if (dims.size > 1) {
    const first3 = sources.find((s) => s.reader.info.shape.length === 3)!;
    throw new InputError(first3.name, 'is a 3D stack while other inputs are 2D images: train 2D and 3D models separately');
  }
  return sources[0].reader.info.shape.length === 3 ? 3 : 2;
}

/**
 * Held-out data for streamed sources, the same policy as splitForValidation but chunk-aligned:
 * whole sources when there are several, else a slab of whole chunks at the end of axis 0 (at least
 * one patch thick, about `fraction` of the chunks), so no chunk serves both training and
 * validation. Too small to split: validation patches come from the training data.
 */
export function splitSourcesForValidation(
  sources: NamedSource[],
  patchShape: number[],
  fraction: number,
): { train: ChunkedSource[]; validation: ChunkedSource[] } {
  if (fraction <= 0) return { train: sources, validation: sources };
  if (sources.length >= 2) {
    const nVal = Math.max(1, Math.round(sources.length * fraction));
    return { train: sources.slice(0, sources.length - nVal), validation: sources.slice(sources.length - nVal) };
  }
  const { reader, name, target, targetName } = sources[0];
  const { shape, chunks } = reader.info;
  const chunkRows = Math.ceil(shape[0] / chunks[0]);
  const valRows = Math.max(Math.ceil(patchShape[0] / chunks[0]), Math.round(chunkRows * fraction));
  const slabStart = (chunkRows - valRows) * chunks[0];
  // The slab must hold a patch too (the last chunk row may be short).
  if (slabStart < patchShape[0] || shape[0] - slabStart < patchShape[0]) return { train: sources, validation: sources };
  const whole = { start: shape.map(() => 0), end: [...shape] };
  // A pair's target is split by the same bounds (same shape): its held-out voxels are the input's.
  const pairedPart = (suffix: string): Pick<ChunkedSource, 'target' | 'targetName'> =>
    target ? { target, targetName: `${targetName ?? `${name} (target)`}${suffix}` } : {};
  return {
    train: [{ reader, name, ...pairedPart(''), bounds: { start: whole.start, end: [slabStart, ...whole.end.slice(1)] } }],
    validation: [{ reader, name: `${name} (validation slab)`, ...pairedPart(' (validation slab)'), bounds: { start: [slabStart, ...whole.start.slice(1)], end: whole.end } }],
  };
}

export async function prepareStreamingData(
  sources: NamedSource[],
  opts: {
    patchShape: number[];
    batchSize: number;
    seed: number;
    valFraction: number;
    valPatches: number;
    preparation: PatchPreparation;
    mode: 'meanstd' | 'percentile';
    aheadBatches: number;
    settings: StreamingTrainSettings;
    onEvent?: (event: TrainEvent) => void;
  },
): Promise<TrainingData> {
  const { patchShape, batchSize, seed, settings } = opts;
  const { train, validation } = splitSourcesForValidation(sources, patchShape, opts.valFraction);
  const patchesPerRegion = Math.max(1, Math.min(batchSize, settings.patchesPerRegion ?? 8));
  const regionsPerStep = Math.ceil(batchSize / patchesPerRegion);
  // One step's regions must fit in the cache together, or patches re-read chunks the step just fetched.
  // Paired sources: regionBytes counts the target chunks under each region too (both arrays share the
  // one cache), so the bound below holds for input + target, never more than one step's regions of each.
  const stepBytes = regionsPerStep * Math.max(...[...train, ...validation].map((s) => regionBytes(s, patchShape, settings.regionChunks)));
  const buffers = streamingTrainBufferBytes({
    patchShape,
    batchSize,
    aheadBatches: opts.aheadBatches,
    valPatches: opts.valPatches,
    chunkShape: sources[0].reader.info.chunks,
    readConcurrency: settings.readConcurrency,
    paired: sources.some((s) => s.target),
  });
  const cacheBytes = settings.cacheBytes ?? (settings.maxMemoryBytes !== undefined ? settings.maxMemoryBytes - buffers : Math.max(256 * 2 ** 20, stepBytes));
  if (cacheBytes < stepBytes) {
    // Never a negative figure: a budget below the buffers alone says so, and how much is needed.
    const fromBudget = settings.maxMemoryBytes !== undefined && settings.cacheBytes === undefined;
    const needed = mib(buffers + stepBytes);
    throw new UsageError(
      fromBudget
        ? `--max-memory ${mib(settings.maxMemoryBytes!)} is too small: batches and statistics take ${mib(buffers)} and the chunk cache must hold one training step's chunks ` +
            `(${regionsPerStep} region(s), ${mib(stepBytes)}); allow at least ${needed}, or use smaller regions or more patches per region`
        : `the chunk cache, ${mib(Math.max(0, cacheBytes))}, cannot hold the chunks of one training step (${regionsPerStep} region(s), ${mib(stepBytes)}): ` +
            'allow more memory, or use smaller regions or more patches per region',
    );
  }
  const cache = new ChunkCache(cacheBytes);
  const sampled: SampledNormalisation = await sampleNormalisation(train, opts.mode, {
    seed: mixSeed(seed, 0x6e6f, 0),
    sampleValues: settings.normalisationSampleValues,
    readConcurrency: settings.readConcurrency,
  });
  const { normalisation } = sampled;
  opts.onEvent?.({
    type: 'normalisation',
    mode: normalisation.mode,
    offset: normalisation.offset,
    scale: normalisation.scale,
    chunksRead: sampled.chunksRead,
    chunksTotal: sampled.chunksTotal,
    valuesSeen: sampled.valuesSeen,
    rankErrorBound: sampled.rankErrorBound,
  });
  const common = {
    cache,
    patchShape: patchShape as unknown as Shape,
    patchesPerRegion,
    regionChunks: settings.regionChunks,
    readConcurrency: settings.readConcurrency,
    normalisation,
    background: settings.background,
    onRegion: settings.onRegion,
  };
  // Validation: a fixed seeded set drawn once (the same every validation, so losses compare).
  const validationSampler = regionStepSampler({ ...common, sources: validation, patchesPerStep: batchSize, seed: seed ^ 0x5a5a5a5a });
  const per = patchShape.reduce((a, b) => a * b, 1);
  const valBatches: ValidationBatch[] = [];
  for (let b = 0; b * batchSize < opts.valPatches; b++) {
    const patches = (await validationSampler(b)).slice(0, Math.min(batchSize, opts.valPatches - b * batchSize));
    const n = patches.length;
    const batch: ValidationBatch = { shape: [n, ...patchShape, 1], inputs: new Float32Array(per * n), targets: new Float32Array(per * n), masks: new Float32Array(per * n) };
    patches.forEach((p, i) => {
      const m = prepareValidationPatch({ ...p, step: b * batchSize + i }, opts.preparation);
      batch.inputs.set(m.input, i * per);
      batch.targets.set(m.target, i * per);
      batch.masks.set(m.mask, i * per);
    });
    valBatches.push(batch);
  }
  const regionStats: RegionSamplingStats = { regions: 0, patchesDrawn: 0, backgroundSkipped: 0 };
  return {
    trainNames: train.map((t) => t.name),
    validationNames: validation.map((v) => v.name),
    normalisation,
    patches: sampleRegions({ ...common, sources: train, patchesPerStep: batchSize, seed, stats: regionStats }),
    valBatches,
    cache,
    regionStats,
  };
}

/**
 * Bytes the streaming data side holds besides the chunk cache: the batch queue ((aheadBatches + 1)
 * batches, each about six float32 copies of its patches between sampling, augmentation, masking and
 * packing; eight for pairs, whose targets are cut, normalised and augmented too but not masked), the
 * fixed validation set (input, target, mask), the quantile sketch and the chunks of one window of
 * normalisation reads (raw and cropped; statistics come from the inputs only). A pair's target
 * chunks are in the cache, whose bound (regionBytes) counts them.
 */
export function streamingTrainBufferBytes(opts: {
  patchShape: readonly number[];
  batchSize: number;
  aheadBatches?: number;
  valPatches: number;
  chunkShape: readonly number[];
  readConcurrency?: number;
  /** n2n / care sources (with targets). */
  paired?: boolean;
}): number {
  const patchBytes = 4 * opts.patchShape.reduce((a, b) => a * b, 1);
  const copiesPerPatch = opts.paired ? 8 : 6;
  const queue = ((opts.aheadBatches ?? 2) + 1) * copiesPerPatch * opts.batchSize * patchBytes;
  const validation = 3 * opts.valPatches * patchBytes;
  const statistics = 4 * defaultSketchCapacity + 2 * (opts.readConcurrency ?? 4) * 4 * opts.chunkShape.reduce((a, b) => a * b, 1);
  return queue + validation + statistics;
}

function mib(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}

/** A fixed, seeded set of masked validation patches: the same every validation, so losses compare. */
export function makeValidationBatches(
  validation: NamedVolume[],
  patchShape: number[],
  batchSize: number,
  count: number,
  normalisation: Normalisation,
  preparation: PatchPreparation,
  seed: number,
): ValidationBatch[] {
  const batches: ValidationBatch[] = [];
  const per = patchShape.reduce((a, b) => a * b, 1);
  for (let b = 0; b * batchSize < count; b++) {
    const n = Math.min(batchSize, count - b * batchSize);
    const inputs = new Float32Array(per * n);
    const targets = new Float32Array(per * n);
    const masks = new Float32Array(per * n);
    for (let i = 0; i < n; i++) {
      const rng = new Rng(mixSeed(seed ^ 0x5a5a5a5a, b, i));
      const { volume, name, target } = validation[rng.int(validation.length)];
      const shape = patchShape as unknown as Shape;
      let patch: Float32Array;
      let targetPatch: Float32Array | undefined;
      if (target) {
        const pair = randomPatchPair(volume, target, shape, rng, name);
        patch = normalise(pair.input, normalisation);
        targetPatch = normalise(pair.target, normalisation);
      } else {
        patch = normalise(randomPatch(volume, shape, rng, name), normalisation);
      }
      // Validation patches take every grid phase in turn (step = their index).
      const m = prepareValidationPatch({ step: b * batchSize + i, shape, data: patch, target: targetPatch, rng }, preparation);
      inputs.set(m.input, i * per);
      targets.set(m.target, i * per);
      masks.set(m.mask, i * per);
    }
    batches.push({ shape: [n, ...patchShape, 1], inputs, targets, masks });
  }
  return batches;
}
