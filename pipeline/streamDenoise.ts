/**
 * Streaming denoise: chunked input -> chunked output in memory bounded by the tile, its halo, the
 * queue depths and the chunk cache, never by the volume.
 *
 *   tile specs (one per output chunk, handed out against credits)
 *     -> readTiles (bounded concurrency, through the ChunkCache, reflect padding, normalisation)
 *     -> predictTilePixels (the model, one call at a time)
 *     -> stitchWithBlending (crops the halo; emits each block when complete)
 *     -> writeChunks (whole chunks, bounded concurrency, checksum journaled)
 *
 * Backpressure: at most `tickets` tiles are between the spec generator and a finished chunk write;
 * a ticket comes back only when its chunk is stored, so a slow model or a slow store holds back the
 * reads instead of letting queues grow.
 *
 * Blending: tiles are cut with a margin >= the receptive radius on the pooling grid, so every tile's
 * prediction of its core already equals the canonical whole-volume prediction (see
 * operators/tileGrid.ts); blending overlapping kept regions would only average float rounding.
 * Blending also needs the neighbours of a block before the block can be written, i.e. a front of
 * blocks (a row in 2D, a slab in 3D) held in memory, which grows with the volume's cross-section.
 * So the streaming path blends with width 0: each block is its own tile's core, written as soon as
 * predicted, and the result matches the in-memory (blended) denoise within float rounding.
 *
 * Order: neighbouring blocks read the same input chunks (their halos overlap). In raster order a 3D
 * block meets its neighbour in Z a whole plane of blocks later, so a cache smaller than a plane of
 * halo chunks fetches them again (x2-x10 for large volumes). Blocks are therefore handed out column
 * by column (operators/tileGrid.ts planBlockSweep/sweepBlocks): columns as wide as the planned cache
 * holds, each swept along Z, so chunks are fetched again only across column faces (about 1.05-1.2
 * fetches per chunk; raster order itself when a plane fits). Within a shard only the order of its
 * raster range of blocks changes; outputs do not depend on the order.
 *
 * Resume: a journal of sha256 checksums of the stored bytes of every written chunk, plus a run
 * fingerprint (model and options), lives next to the output. On resume a chunk counts as done only
 * if the journal names it under the same fingerprint and its stored bytes hash to the recorded
 * value; only tiles of chunks not done are computed. Inference is deterministic (one tile per model
 * call, fixed geometry), so a resumed run writes the same bytes as an uninterrupted one.
 */
import { createHash } from 'node:crypto';
import * as tf from '@tensorflow/tfjs-core';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import v8 from 'node:v8';
import vm from 'node:vm';
import { Observable, Subject, lastValueFrom, tap } from 'rxjs';
import { InputError, OutputError, UsageError } from '../core/errors.js';
import type { Shape } from '../core/volume.js';
import { voxelCount } from '../core/volume.js';
import type { Normalisation } from '../models/normalise.js';
import { readTiles } from '../operators/readTiles.js';
import { type TileModel, predictTilePixels } from '../operators/predictTiles.js';
import { stitchWithBlending } from '../operators/stitchWithBlending.js';
import { type BlockSweep, type TilePlan, type TileSpec, planBlockSweep, planTileGrid, readChunkSpans, sweepBlocks, tileSpecAt } from '../operators/tileGrid.js';
import { type WrittenChunk, sha256Hex, writeChunks } from '../operators/writeChunks.js';
import type { ByteStore } from '../storage/byteStore.js';
import { fitChunkedInputNoise, inputNoiseRecord } from '../noise/inputNoise.js';
import { ChunkCache, type ChunkCacheStats, readRegionReflected } from '../storage/chunkCache.js';
import { type ArrayInfo, type ChunkedArrayReader, type ChunkedArrayWriter, chunkGrid } from '../storage/chunked.js';
import type * as tfl from '@tensorflow/tfjs-layers';
import { estimateBytesPerVoxel } from './predict.js';
import { VERSION } from '../core/version.js';
import { MANIFEST_JSON, MODEL_JSON, WEIGHTS_BIN, type ModelManifest, loadModelFolder } from '../models/io.js';
import { denoisingTileModel, type DenoiseOutput } from '../methods/denoiser.js';
import type { SamplingOptions } from '../methods/method.js';
import { createOmeZarr, openOmeZarrWriter, type OmeZarrWriter } from '../storage/ome.js';
import { openByteStore, openChunkedSource } from '../storage/open.js';
import type { S3Settings } from '../storage/s3.js';
import { networkGeometry } from '../models/network.js';
import { type ShardSpec, shardBlockRange, shardJournalPrefix } from './shard.js';

/** Node, TensorFlow.js and its backend before any tile: measured RSS of a process that has loaded them (cpu ~110 MiB, wasm ~150 MiB) plus slack. */
export const RUNTIME_BYTES = 192 * 2 ** 20;

const MiB = 2 ** 20;

/** Bytes from a size like '2GiB', '512MiB', '1.5G', '800M' or a plain number of bytes. */
export function parseByteSize(text: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$/i.exec(text);
  if (!match) throw new UsageError(`a memory size must look like 2GiB, 512MiB or 800M, got '${text}'`);
  const power = ' kmgt'.indexOf(match[2].toLowerCase() || ' ');
  return Math.floor(Number(match[1]) * 1024 ** power);
}

function roundUp(value: number, multiple: number): number {
  return Math.ceil(value / multiple) * multiple;
}

export interface StreamGeometry {
  /** Tile sizes and origins are multiples of this (2^depth). */
  sizeMultiple: number;
  /** Context per side a prediction depends on. */
  receptiveRadius: number;
}

/** How `maxMemoryBytes` is spent. All values in bytes unless named otherwise. */
export interface StreamMemoryPlan {
  maxMemoryBytes: number;
  /** Node + TensorFlow.js + backend (RUNTIME_BYTES). */
  runtimeBytes: number;
  /** Model weights, counted twice (the loaded copy and the backend's). */
  modelBytes: number;
  /** Output chunk = tile core, YX or ZYX voxels. */
  coreShape: number[];
  /** Padded tile fed to the model. */
  readShape: number[];
  /** One forward pass on one padded tile (estimated bytes per voxel x voxels; x2 with TTA for the 8 averaged passes' outputs). */
  activationBytes: number;
  /** Tiles allowed between the spec generator and a stored chunk. */
  tickets: number;
  readConcurrency: number;
  writeConcurrency: number;
  /** Buffers one ticket may hold: raw and normalised padded tile, prediction, block, chunk and its encoded bytes. */
  ticketBytes: number;
  /** Input chunk cache bound. */
  cacheBytes: number;
  /** Sum of everything above except the cache's share not needed: runtime + model + activations + tickets + cache. */
  totalBytes: number;
}

export interface PlanStreamOptions extends StreamGeometry {
  maxMemoryBytes: number;
  /** Image shape, YX or ZYX. */
  shape: readonly number[];
  /** Input chunk shape (for the cache's minimum: the chunks every in-flight tile touches). */
  inputChunks: readonly number[];
  bytesPerVoxel: number;
  modelWeightBytes: number;
  tta?: boolean;
  /** Fixed core (the output's chunks); chosen from the budget when absent. */
  coreShape?: readonly number[];
  readConcurrency?: number;
  writeConcurrency?: number;
  /** Cap on one forward pass (the wasm heap stops at 4 GiB); default: the active backend's (wasmActivationCap). */
  maxActivationBytes?: number;
}

/** The wasm backend's heap tops out at 4 GiB and never shrinks: keep one pass well inside it. */
export function activationCapForBackend(): number {
  return tf.getBackend() === 'wasm' ? 3 * 2 ** 30 : Infinity;
}

function memoryFor(core: readonly number[], o: PlanStreamOptions, halo: number): Omit<StreamMemoryPlan, 'cacheBytes' | 'totalBytes'> & { minCacheBytes: number } {
  const readConcurrency = o.readConcurrency ?? 4;
  const writeConcurrency = o.writeConcurrency ?? 4;
  const readShape = core.map((c) => c + 2 * halo);
  const readVoxels = voxelCount(readShape);
  const coreVoxels = voxelCount(core);
  const activationBytes = readVoxels * o.bytesPerVoxel * (o.tta ? 2 : 1);
  const tickets = readConcurrency + 1 + writeConcurrency;
  const ticketBytes = readVoxels * 4 * 2 + coreVoxels * 4 * 5;
  const touchedPerTile = readShape.reduce((n, r, axis) => n * (Math.min(Math.ceil(r / o.inputChunks[axis]) + 1, Math.ceil(o.shape[axis] / o.inputChunks[axis]))), 1);
  const minCacheBytes = (readConcurrency + 1) * touchedPerTile * voxelCount(o.inputChunks) * 4;
  return {
    maxMemoryBytes: o.maxMemoryBytes,
    runtimeBytes: RUNTIME_BYTES,
    modelBytes: 2 * o.modelWeightBytes,
    coreShape: [...core],
    readShape,
    activationBytes,
    tickets,
    readConcurrency,
    writeConcurrency,
    ticketBytes,
    minCacheBytes,
  };
}

/**
 * Splits `maxMemoryBytes`: runtime and model first; of the rest, the tile (activations plus every
 * ticket's buffers plus the cache's minimum) may take 60%, and the cache gets what is left, so
 * neighbouring tiles find most of their input chunks cached. Without a fixed core, the core shape
 * (= output chunk shape, a multiple of sizeMultiple) is the one computing the fewest voxels in all
 * (halo included) among those that fit. Throws a UsageError when nothing fits.
 */
export function planStreamMemory(o: PlanStreamOptions): StreamMemoryPlan {
  const m = o.sizeMultiple;
  const halo = roundUp(o.receptiveRadius, m);
  const available = o.maxMemoryBytes - RUNTIME_BYTES - 2 * o.modelWeightBytes;
  const tileShare = 0.6 * available;
  const cost = (core: readonly number[]): number => {
    const p = memoryFor(core, o, halo);
    return p.activationBytes + p.tickets * p.ticketBytes + p.minCacheBytes;
  };
  let core: number[];
  if (o.coreShape) {
    core = [...o.coreShape];
    if (core.some((c, axis) => c % m !== 0 && c < o.shape[axis])) {
      throw new UsageError(`output chunks [${core.join(', ')}] must be multiples of the network's pooling size ${m}`);
    }
  } else {
    const cap = o.maxActivationBytes ?? activationCapForBackend();
    core = chooseCoreShape(o.shape, m, halo, (c) => cost(c) <= tileShare && memoryFor(c, o, halo).activationBytes <= cap);
  }
  const need = cost(core);
  if (available <= 0 || need > available) {
    const floor = RUNTIME_BYTES + 2 * o.modelWeightBytes + need;
    throw new UsageError(
      `--max-memory ${(o.maxMemoryBytes / MiB).toFixed(0)} MiB is too small: the runtime, the model and one ` +
        `[${core.join('x')}] tile need about ${Math.ceil(floor / MiB)} MiB`,
    );
  }
  const p = memoryFor(core, o, halo);
  const rest = available - p.activationBytes - p.tickets * p.ticketBytes;
  const cacheBytes = Math.max(p.minCacheBytes, Math.floor(rest));
  const { minCacheBytes: _unused, ...plan } = p;
  void _unused;
  return { ...plan, cacheBytes, totalBytes: RUNTIME_BYTES + plan.modelBytes + plan.activationBytes + plan.tickets * plan.ticketBytes + cacheBytes };
}

/**
 * The core shape computing the fewest voxels (tiles x padded tile voxels) among multiples of
 * `sizeMultiple` for which `fits` holds; ties go to fewer tiles. Per axis at most 96 candidate
 * sizes are tried (evenly spread, plus the balanced sizes ceil(n/k) for small k).
 */
export function chooseCoreShape(shape: readonly number[], sizeMultiple: number, halo: number, fits: (core: number[]) => boolean): number[] {
  const m = sizeMultiple;
  const candidates = shape.map((n) => {
    const largest = roundUp(n, m);
    const steps = largest / m;
    const sizes = new Set<number>();
    const stride = Math.max(1, Math.ceil(steps / 64));
    for (let k = 1; k <= steps; k += stride) sizes.add(k * m);
    for (let k = 1; k <= 32; k++) sizes.add(Math.min(largest, roundUp(Math.ceil(n / k), m)));
    return [...sizes].sort((a, b) => a - b);
  });
  let best: { core: number[]; work: number; tiles: number } | null = null;
  const visit = (axis: number, chosen: number[]): void => {
    if (axis === shape.length) {
      if (!fits(chosen)) return;
      const tiles = chosen.reduce((t, c, a) => t * Math.ceil(shape[a] / c), 1);
      const work = tiles * chosen.reduce((v, c) => v * (c + 2 * halo), 1);
      if (best === null || work < best.work || (work === best.work && tiles < best.tiles)) best = { core: [...chosen], work, tiles };
      return;
    }
    for (const c of candidates[axis]) {
      const partial = [...chosen, c];
      // Sizes only grow along a candidate list: once the smallest completion does not fit, stop.
      if (!fits([...partial, ...candidates.slice(axis + 1).map((list) => list[0])])) break;
      visit(axis + 1, partial);
    }
  };
  visit(0, []);
  if (best === null) return shape.map(() => m);
  const chosen = (best as { core: number[] }).core;
  // Balance: same tile count, cores as even as the pooling grid allows.
  return chosen.map((c, axis) => roundUp(Math.ceil(shape[axis] / Math.ceil(shape[axis] / c)), m));
}

/** A journal of stored chunks and the fingerprint of the run that wrote them, kept in a ByteStore under `prefix`. */
export class RunJournal {
  private pending: WrittenChunk[] = [];
  private nextSegment = 0;
  private flushing: Promise<void> = Promise.resolve();
  private lastFlush = Date.now();

  constructor(
    readonly store: ByteStore,
    readonly prefix: string,
    readonly fingerprint: string,
    /** Flush after this many chunks or this many ms, whichever first. */
    readonly flushEvery = { chunks: 32, ms: 1000 },
  ) {}

  private get runKey(): string {
    return `${this.prefix}/run.json`;
  }

  private segmentKey(n: number): string {
    return `${this.prefix}/journal/${String(n).padStart(8, '0')}.json`;
  }

  /** The stored run record, or null when there is none. */
  async readRun(): Promise<{ fingerprint: string; complete: boolean } | null> {
    const bytes = await this.store.get(this.runKey);
    if (!bytes) return null;
    return JSON.parse(Buffer.from(bytes).toString('utf8')) as { fingerprint: string; complete: boolean };
  }

  async writeRun(complete: boolean): Promise<void> {
    await this.store.set(this.runKey, new TextEncoder().encode(JSON.stringify({ format: 'blindspot-denoise-run', fingerprint: this.fingerprint, complete }) + '\n'));
  }

  /** Every journaled chunk (key 'i.j.k' -> sha256), later segments winning; also sets the next segment number. */
  async readEntries(): Promise<Map<string, string>> {
    const keys: string[] = [];
    for await (const key of this.store.list(`${this.prefix}/journal/`)) keys.push(key);
    keys.sort();
    const entries = new Map<string, string>();
    for (const key of keys) {
      const bytes = await this.store.get(key);
      if (!bytes) continue;
      let segment: { fingerprint: string; chunks: Array<[string, string]> };
      try {
        segment = JSON.parse(Buffer.from(bytes).toString('utf8'));
      } catch {
        continue; // Unreadable segments only cost recomputation.
      }
      if (segment.fingerprint !== this.fingerprint) continue;
      for (const [chunk, sha] of segment.chunks) entries.set(chunk, sha);
      const n = Number(key.slice(key.lastIndexOf('/') + 1, -'.json'.length));
      if (Number.isInteger(n)) this.nextSegment = Math.max(this.nextSegment, n + 1);
    }
    return entries;
  }

  record(chunk: WrittenChunk): Promise<void> {
    this.pending.push(chunk);
    if (this.pending.length >= this.flushEvery.chunks || Date.now() - this.lastFlush >= this.flushEvery.ms) return this.flush();
    return Promise.resolve();
  }

  /** Writes the pending entries as one new segment (segments are written one at a time, in order). */
  flush(): Promise<void> {
    const batch = this.pending;
    this.pending = [];
    this.lastFlush = Date.now();
    if (batch.length === 0) return this.flushing;
    const n = this.nextSegment++;
    const body = JSON.stringify({ fingerprint: this.fingerprint, chunks: batch.map((c) => [c.index.join('.'), c.sha256]) });
    this.flushing = this.flushing.then(() => this.store.set(this.segmentKey(n), new TextEncoder().encode(body)));
    return this.flushing;
  }

  /** Drops the journal segments (after the run record says complete). */
  async removeSegments(): Promise<void> {
    const keys: string[] = [];
    for await (const key of this.store.list(`${this.prefix}/journal/`)) keys.push(key);
    for (const key of keys) await this.store.delete(key);
  }
}

/** The run records of a sharded run's shards (under `prefix`/shards/i-of-N/run.json). */
async function readShardRuns(store: ByteStore, prefix: string): Promise<Array<ShardSpec & { fingerprint: string; complete: boolean }>> {
  const runs: Array<ShardSpec & { fingerprint: string; complete: boolean }> = [];
  for await (const key of store.list(`${prefix}/shards/`)) {
    const match = /\/shards\/(\d+)-of-(\d+)\/run\.json$/.exec(key);
    if (!match) continue;
    const bytes = await store.get(key);
    if (!bytes) continue;
    try {
      const run = JSON.parse(Buffer.from(bytes).toString('utf8')) as { fingerprint: string; complete: boolean };
      runs.push({ index: Number(match[1]), count: Number(match[2]), fingerprint: run.fingerprint, complete: run.complete === true });
    } catch {
      // A torn record counts as not complete.
    }
  }
  return runs;
}

function s3Parts(url: string): { bucket: string; key: string } | null {
  const match = /^s3:\/\/([^/]+)\/?(.*)$/i.exec(url);
  if (!match) return null;
  return { bucket: match[1], key: match[2].replace(/\/+$/, '') };
}

/** Whether `inner` is `outer` or lies inside it, comparing '/'-separated path segments. */
function within(inner: string, outer: string): boolean {
  if (outer === '') return true;
  return inner === outer || inner.startsWith(outer.endsWith('/') ? outer : `${outer}/`);
}

/**
 * Refuses (UsageError, before anything is written) an output that is the input, lies inside it or
 * contains it: same path, or the same S3 bucket with one prefix inside the other.
 */
export function assertOutputIsNotInput(input: string, output: string): void {
  const a = s3Parts(input);
  const b = s3Parts(output);
  let clash = false;
  if (a && b) {
    clash = a.bucket === b.bucket && (within(a.key, b.key) || within(b.key, a.key));
  } else if (!a && !b) {
    const ra = path.resolve(input);
    const rb = path.resolve(output);
    clash = ra === rb || rb.startsWith(ra + path.sep) || ra.startsWith(rb + path.sep);
  }
  if (clash) throw new UsageError(`the output ${output} would overwrite the input ${input}; choose an output outside the input`);
}

/** sha256 of the things that decide the output's bytes: the model and the options. */
export function runFingerprint(parts: Record<string, unknown>): string {
  return createHash('sha256').update(JSON.stringify(parts)).digest('hex');
}

export type StreamDenoiseEvent =
  | {
      type: 'stream-start';
      shape: readonly number[];
      chunks: readonly number[];
      /** Blocks of this run (of this shard when sharded). */
      chunksTotal: number;
      chunksDone: number;
      memory: StreamMemoryPlan;
      /** The order blocks are computed in, and the input-chunk fetches per chunk it expects. */
      sweep: BlockSweep;
      shard?: ShardSpec & { blocks: { start: number; end: number }; blocksAll: number };
    }
  | { type: 'stream-verified'; journaled: number; verified: number }
  | { type: 'chunk'; index: readonly number[]; done: number; total: number; seconds: number; megavoxelsPerSecond: number; etaSeconds: number | null }
  | {
      type: 'stream-done';
      seconds: number;
      chunksWritten: number;
      megavoxelsPerSecond: number;
      cache: ChunkCacheStats;
      /** Input chunk fetches per distinct input chunk read (cache misses / distinct chunks; 1 at best); null when nothing was read. */
      fetchesPerChunk: number | null;
    };

export interface DenoiseChunkedOptions extends StreamGeometry {
  /** YX or ZYX input (raw intensities). */
  input: ChunkedArrayReader;
  /** Output of the same shape; its chunks are the tile cores (multiples of sizeMultiple). */
  output: ChunkedArrayWriter;
  /** One channel in and out, on normalised values. */
  model: TileModel;
  normalisation: Normalisation;
  /** How model outputs go back to input units; default `normalisation` (a standard deviation: offset 0). */
  outputNormalisation?: Normalisation;
  maxMemoryBytes: number;
  /** Bytes of the model's weights (counted in the budget). */
  modelWeightBytes?: number;
  /** Activation bytes per padded-tile voxel; default estimated from the model (pipeline/predict.ts). */
  bytesPerVoxel?: number;
  tta?: boolean;
  /** Where the run record and chunk journal go (normally the output's own store); without it nothing can be resumed. */
  journal?: { store: ByteStore; prefix?: string; fingerprint: string };
  /** Continue an interrupted run: verify journaled chunks, compute only the others. */
  resume?: boolean;
  /**
   * Compute only this shard's blocks (pipeline/shard.ts), with its own run record and journal. A
   * shard always resumes: rerunning a killed shard (what Kubernetes and AWS Batch do) continues it.
   */
  shard?: ShardSpec;
  /**
   * The output chunk a key of the journal store holds (null for other keys). With it a shard
   * cleans up its own interrupted writes; without it a shard leaves them (harmless, never read),
   * since other shards may be writing at that moment.
   */
  outputChunkOfKey?: (key: string) => number[] | null;
  signal?: AbortSignal;
  onEvent?: (event: StreamDenoiseEvent) => void;
  readConcurrency?: number;
  writeConcurrency?: number;
  /**
   * The order blocks are computed in: 'sweep' (default) column by column so that the input chunks
   * neighbouring blocks share stay in the cache (operators/tileGrid.ts planBlockSweep); 'raster'
   * plain raster order, for comparison (it fetches the halo chunks again once a plane's worth no
   * longer fits in the cache). The output bytes do not depend on it.
   */
  order?: 'sweep' | 'raster';
}

export interface DenoiseChunkedResult {
  /** Blocks of this run (of this shard when sharded). */
  chunksTotal: number;
  /** Chunks found complete and verified before this run. */
  chunksSkipped: number;
  chunksWritten: number;
  interrupted: boolean;
  /**
   * Every block of the output is stored: this run (or shard) is complete, and so are all other
   * shards of a sharded run. Whoever sees this builds what needs the whole level 0 (the pyramid).
   */
  allComplete: boolean;
  memory: StreamMemoryPlan;
  /** The order blocks were computed in (column shape and expected fetches per input chunk). */
  sweep: BlockSweep;
  cache: ChunkCacheStats;
}

export const JOURNAL_PREFIX = '/.blindspot-denoise';

/** models/normalise.ts normalise, in place (the same arithmetic, so the same float32 values). */
function normaliseInPlace(values: Float32Array, n: Normalisation): Float32Array {
  const inverseScale = 1 / n.scale;
  for (let i = 0; i < values.length; i++) values[i] = (values[i] - n.offset) * inverseScale;
  return values;
}

/** models/normalise.ts denormalise, in place. */
function denormaliseInPlace(values: Float32Array, n: Normalisation): Float32Array {
  for (let i = 0; i < values.length; i++) values[i] = values[i] * n.scale + n.offset;
  return values;
}

/**
 * V8 collects ArrayBuffers only when their total grows by tens of MiB since the last collection, so
 * freed tile buffers linger and the peak RSS wanders with run length by that much. Collecting after
 * every `slackBytes` of tile buffers keeps the garbage inside the budget. Null when gc cannot be had.
 */
function garbageCollector(): (() => void) | null {
  try {
    v8.setFlagsFromString('--expose-gc');
    const gc = vm.runInNewContext('gc') as () => void;
    return typeof gc === 'function' ? gc : null;
  } catch {
    return null;
  }
}

/**
 * The block order of a run: columns whose working set fits in the cache beside the chunks of the
 * tiles read ahead (the cache's planned minimum), or raster order when asked for. The memory plan
 * is not changed: the order is chosen for the cache it gives.
 */
function blockSweepFor(plan: TilePlan, inputChunks: readonly number[], memory: StreamMemoryPlan, order: 'sweep' | 'raster'): BlockSweep {
  const chunkBytes = voxelCount(inputChunks) * 4;
  const touchedPerTile = inputChunks.reduce((n, chunk, axis) => {
    const { first, last } = readChunkSpans(plan, axis, chunk);
    let widest = 0;
    for (let k = 0; k < first.length; k++) widest = Math.max(widest, last[k] - first[k] + 1);
    return n * widest;
  }, 1);
  const readAheadChunks = (memory.readConcurrency + 1) * touchedPerTile;
  const sweepChunks = Math.max(0, Math.floor(memory.cacheBytes / chunkBytes) - readAheadChunks);
  return planBlockSweep(plan, inputChunks, sweepChunks, { rasterOnly: order === 'raster' });
}

function rasterOrdinal(index: readonly number[], grid: readonly number[]): number {
  let o = 0;
  for (let axis = 0; axis < index.length; axis++) o = o * grid[axis] + index[axis];
  return o;
}

/**
 * Denoises a chunked array into another, chunk by chunk, in bounded memory (see the module comment).
 * Returns when every output chunk is stored (or, after `signal` aborts, once the chunks under way are
 * stored and journaled: `interrupted` is then true).
 */
export async function denoiseChunked(opts: DenoiseChunkedOptions): Promise<DenoiseChunkedResult> {
  const { input, output } = opts;
  const shape = input.info.shape;
  if (shape.length !== 2 && shape.length !== 3) throw new InputError(input.info.url, `must be a YX or ZYX array, got shape [${shape.join(', ')}]`);
  if (output.info.shape.join() !== shape.join()) {
    throw new OutputError(output.info.url, `has shape [${output.info.shape.join(', ')}], the input [${shape.join(', ')}]`);
  }
  assertOutputIsNotInput(input.info.url, output.info.url);
  const dims = shape.length as 2 | 3;
  const memory = planStreamMemory({
    maxMemoryBytes: opts.maxMemoryBytes,
    shape,
    inputChunks: input.info.chunks,
    sizeMultiple: opts.sizeMultiple,
    receptiveRadius: opts.receptiveRadius,
    bytesPerVoxel: opts.bytesPerVoxel ?? estimateBytesPerVoxel(opts.model, dims, opts.sizeMultiple),
    modelWeightBytes: opts.modelWeightBytes ?? 0,
    tta: opts.tta,
    coreShape: output.info.chunks,
    readConcurrency: opts.readConcurrency,
    writeConcurrency: opts.writeConcurrency,
  });
  const plan: TilePlan = planTileGrid(shape as unknown as Shape, {
    sizeMultiple: opts.sizeMultiple,
    receptiveRadius: opts.receptiveRadius,
    tileShape: output.info.chunks,
    blendWidth: 0,
  });
  const grid = chunkGrid(output.info);
  if (plan.grid.join() !== grid.join()) {
    throw new Error(`denoiseChunked: tile grid [${plan.grid.join(', ')}] does not match the output chunk grid [${grid.join(', ')}]`);
  }
  const blocksAll = plan.tileCount;
  const blocks = opts.shard ? shardBlockRange(blocksAll, opts.shard) : { start: 0, end: blocksAll };
  const sweep = blockSweepFor(plan, input.info.chunks, memory, opts.order ?? 'sweep');
  const chunksTotal = blocks.end - blocks.start;
  const resume = opts.resume === true || opts.shard !== undefined;

  // What is already done: journaled under this fingerprint and still holding the journaled bytes.
  const done = new Uint8Array(blocksAll);
  const runPrefix = opts.journal?.prefix ?? JOURNAL_PREFIX;
  const journal = opts.journal ? new RunJournal(opts.journal.store, opts.shard ? shardJournalPrefix(runPrefix, opts.shard) : runPrefix, opts.journal.fingerprint) : null;
  const wholeRun = opts.journal && opts.shard ? new RunJournal(opts.journal.store, runPrefix, opts.journal.fingerprint) : null;
  let chunksSkipped = 0;
  const ownBlock = (index: readonly number[] | null): boolean => {
    if (!index || index.length !== dims || index.some((k, axis) => !(k >= 0 && k < grid[axis]))) return false;
    const ordinal = rasterOrdinal(index, grid);
    return ordinal >= blocks.start && ordinal < blocks.end;
  };
  // A shard owns its journal and its blocks' writes; everything else may be another shard's, in flight.
  const owned = opts.shard && journal
    ? (key: string): boolean => key.startsWith(journal.prefix + '/') || (opts.outputChunkOfKey !== undefined && ownBlock(opts.outputChunkOfKey(key)))
    : undefined;
  if (journal && opts.journal) {
    const whole = await wholeRun?.readRun();
    const run = whole ?? (await journal.readRun());
    if (run && run.fingerprint !== journal.fingerprint) {
      throw new OutputError(output.info.url, 'was written by a different model or different options; choose another output or delete it');
    }
    if (run && !resume) throw new OutputError(output.info.url, 'holds a denoise run already; pass --resume to continue it, or choose another output');
    if (opts.shard && run && run === whole && !run.complete) {
      throw new OutputError(output.info.url, 'holds a run started without --shard; continue it with --resume and no --shard');
    }
    if (!opts.shard) {
      const shardRuns = await readShardRuns(opts.journal.store, runPrefix);
      if (shardRuns.length > 0 && !run?.complete) {
        throw new OutputError(output.info.url, `is being written by ${shardRuns[0].count} shards; run them (--shard i/${shardRuns[0].count}) to finish it, or choose another output`);
      }
    } else if (!run) {
      const others = (await readShardRuns(opts.journal.store, runPrefix)).filter((r) => r.count !== opts.shard?.count);
      if (others.length > 0) {
        throw new OutputError(output.info.url, `is being written by ${others[0].count} shards, not ${opts.shard.count}; use --shard i/${others[0].count}`);
      }
    }
    if (run?.complete) {
      // Written only after every chunk was stored and journaled; the journal itself is gone then.
      done.fill(1);
      chunksSkipped = chunksTotal;
      await journal.store.cleanUpInterruptedWrites(owned);
      await journal.removeSegments();
    } else if (resume) {
      await journal.store.cleanUpInterruptedWrites(owned);
      const entries = await journal.readEntries();
      const verify = [...entries];
      let next = 0;
      const worker = async (): Promise<void> => {
        while (next < verify.length) {
          const [key, sha] = verify[next++];
          const index = key.split('.').map(Number);
          if (!ownBlock(index)) continue;
          const ordinal = rasterOrdinal(index, grid);
          const stored = await output.readStoredChunk(index);
          if (stored && sha256Hex(stored) === sha) {
            if (!done[ordinal]) chunksSkipped++;
            done[ordinal] = 1;
          }
        }
      };
      await Promise.all(Array.from({ length: 8 }, worker));
      opts.onEvent?.({ type: 'stream-verified', journaled: entries.size, verified: chunksSkipped });
    }
    if (!run?.complete) await journal.writeRun(false);
  }
  opts.onEvent?.({
    type: 'stream-start',
    shape,
    chunks: output.info.chunks,
    chunksTotal,
    chunksDone: chunksSkipped,
    memory,
    sweep,
    ...(opts.shard ? { shard: { ...opts.shard, blocks, blocksAll } } : {}),
  });

  const cache = new ChunkCache(memory.cacheBytes);
  const credits = new Subject<void>();
  let interrupted = false;
  // Tile specs of the chunks not done, in sweep order, one per credit.
  const specs = new Observable<TileSpec>((subscriber) => {
    const indices = sweepBlocks(grid, sweep.column, blocks);
    let available = memory.tickets;
    let pulling = false;
    const pull = (): void => {
      if (pulling) return;
      pulling = true;
      try {
        while (available > 0) {
          if (opts.signal?.aborted) {
            interrupted = true;
            subscriber.complete();
            return;
          }
          const next = indices.next();
          if (next.done) {
            subscriber.complete();
            return;
          }
          if (done[rasterOrdinal(next.value, grid)]) continue;
          available--;
          subscriber.next(tileSpecAt(plan, next.value));
        }
      } finally {
        pulling = false;
      }
    };
    const subscription = credits.subscribe(() => {
      available++;
      pull();
    });
    pull();
    return () => subscription.unsubscribe();
  });

  const t0 = performance.now();
  const voxelsPerChunk = voxelCount(output.info.chunks);
  let chunksWritten = 0;
  // Tile buffers allocated since the last collection; slack: two tickets' buffers (a full collection of the small JS heap takes milliseconds).
  const collect = garbageCollector();
  const garbageSlackBytes = Math.max(16 * MiB, 2 * memory.ticketBytes);
  let garbageBytes = 0;
  await lastValueFrom(
    specs.pipe(
      readTiles({
        concurrency: memory.readConcurrency,
        // In place: the region is a fresh array, and fewer large temporaries keep the peak steady.
        read: async (spec) => normaliseInPlace(await readRegionReflected(input, cache, spec.read.origin, spec.read.shape), opts.normalisation),
      }),
      predictTilePixels({ model: opts.model, tta: opts.tta }),
      stitchWithBlending(),
      writeChunks({
        writer: output,
        concurrency: memory.writeConcurrency,
        // The block's values are ours alone once emitted.
        transform: (values) => denormaliseInPlace(values, opts.outputNormalisation ?? opts.normalisation),
        record: journal ? (chunk) => journal.record(chunk) : undefined,
      }),
      tap((chunk) => {
        chunksWritten++;
        garbageBytes += memory.ticketBytes;
        if (collect && garbageBytes >= garbageSlackBytes) {
          collect();
          garbageBytes = 0;
        }
        const seconds = (performance.now() - t0) / 1000;
        const remaining = chunksTotal - chunksSkipped - chunksWritten;
        opts.onEvent?.({
          type: 'chunk',
          index: chunk.index,
          done: chunksSkipped + chunksWritten,
          total: chunksTotal,
          seconds,
          megavoxelsPerSecond: (chunksWritten * voxelsPerChunk) / 1e6 / seconds,
          etaSeconds: remaining === 0 ? 0 : chunksWritten >= 2 ? (remaining * seconds) / chunksWritten : null,
        });
        credits.next();
      }),
    ),
    { defaultValue: undefined },
  );
  const complete = !interrupted && chunksWritten + chunksSkipped === chunksTotal;
  let allComplete = complete && !opts.shard;
  if (journal && opts.journal) {
    await journal.flush();
    if (complete) {
      await journal.writeRun(true);
      await journal.removeSegments();
    }
    if (complete && opts.shard && wholeRun) {
      // Own record first, then the others' (read by key: N records, not a listing of every journal
      // segment): of two shards finishing together at least one sees both complete.
      const { store } = opts.journal;
      const { count } = opts.shard;
      const runs = await Promise.all(
        Array.from({ length: count }, (_, index) => new RunJournal(store, shardJournalPrefix(runPrefix, { index, count }), journal.fingerprint).readRun()),
      );
      allComplete = runs.every((r) => r?.complete === true && r.fingerprint === journal.fingerprint) || (await wholeRun.readRun())?.complete === true;
      if (allComplete) await wholeRun.writeRun(true);
    }
  }
  const seconds = (performance.now() - t0) / 1000;
  const voxelsWritten = chunksWritten * voxelCount(output.info.chunks);
  const fetchesPerChunk = cache.stats.distinct > 0 ? cache.stats.misses / cache.stats.distinct : null;
  opts.onEvent?.({ type: 'stream-done', seconds, chunksWritten, megavoxelsPerSecond: voxelsWritten / 1e6 / seconds, cache: { ...cache.stats }, fetchesPerChunk });
  return { chunksTotal, chunksSkipped, chunksWritten, interrupted, allComplete, memory, sweep, cache: { ...cache.stats } };
}

// ---------------------------------------------------------------------------------------------
// URL level: a model folder, an input URL (Zarr/OME-Zarr, TIFF stack, frame folder; local or S3)
// and an output OME-Zarr URL.


export interface DenoiseUrlOptions {
  input: string;
  out: string;
  modelDir: string;
  maxMemoryBytes: number;
  s3?: S3Settings;
  ngffVersion?: '0.4' | '0.5';
  channel?: number;
  time?: number;
  resume?: boolean;
  tta?: boolean;
  /** Output sample type: float32 (default) or the input's, rounded and clipped. */
  outputType?: 'float32' | 'input';
  /** Gaussian-prior models: the posterior mean ('denoised', default), its standard deviation, or the prior mean. */
  output?: DenoiseOutput;
  /**
   * Sampling methods (divnoising): samples per block for the MMSE / uncertainty (default
   * STREAM_DEFAULT_SAMPLES, fewer than in memory: every block pays them) and which one 'sample' writes.
   * Each sample's noise is a function of the seed and the position in the image, so resumed and
   * sharded runs write the same bytes.
   */
  sampling?: SamplingOptions;
  /** Output chunk (= tile core) shape, multiples of the pooling size; default chosen from maxMemoryBytes. */
  outputChunks?: number[];
  /** Pyramid levels below level 0 (default: the writer's choice). */
  pyramidLevels?: number;
  /**
   * The command line, recorded as provenance. Leave out what differs between runs of one output
   * (--resume, --shard): shards must write identical metadata, and a resumed run the same as before.
   */
  command?: string[];
  /** Compute only this shard's blocks (pipeline/shard.ts); implies resume. */
  shard?: ShardSpec;
  signal?: AbortSignal;
  onEvent?: (event: StreamDenoiseEvent | { type: 'model'; manifest: ModelManifest } | { type: 'pyramid' }) => void;
}

/** Samples per block when streaming a sampling method's MMSE and none is given. */
export const STREAM_DEFAULT_SAMPLES = 20;

/** sha256 of a model folder's files (network, weights, manifest): the model part of the run fingerprint. */
export async function modelFolderHash(dir: string): Promise<string> {
  const hash = createHash('sha256');
  for (const name of [MODEL_JSON, WEIGHTS_BIN, MANIFEST_JSON]) {
    hash.update(name);
    hash.update(await fs.readFile(path.join(dir, name)));
  }
  return hash.digest('hex');
}

/** A display window for the output known before any voxel is denoised: the model's normalisation range. */
function displayWindow(n: Normalisation): { start: number; end: number; min: number; max: number } {
  const low = n.mode === 'percentile' ? n.offset : n.offset - 3 * n.scale;
  const high = n.mode === 'percentile' ? n.offset + n.scale : n.offset + 3 * n.scale;
  return { start: low, end: high, min: Math.min(low, 0), max: high };
}

/** Everything a URL-level run needs before it writes: model, input, geometry and the memory plan. */
export interface PreparedDenoise {
  manifest: ModelManifest;
  modelHash: string;
  model: tfl.LayersModel;
  tileModel: TileModel;
  input: ChunkedArrayReader;
  geometry: StreamGeometry;
  modelWeightBytes: number;
  bytesPerVoxel: number;
  /** The plan for a new output (an existing output's chunks win over its core shape). */
  memory: StreamMemoryPlan;
  output: DenoiseOutput;
  dtype: ArrayInfo['dtype'];
  close(): Promise<void>;
}

/** Loads the model and opens the input of `opts`, checks they fit together, and plans memory. */
export async function prepareDenoise(opts: Omit<DenoiseUrlOptions, 'out'>): Promise<PreparedDenoise> {
  const { model, manifest } = await loadModelFolder(opts.modelDir);
  let input: ChunkedArrayReader | null = null;
  try {
    const modelHash = await modelFolderHash(opts.modelDir);
    opts.onEvent?.({ type: 'model', manifest });
    const output = opts.output ?? 'denoised';
    const tileModel = denoisingTileModel(model, manifest, output, opts.sampling ?? { samples: STREAM_DEFAULT_SAMPLES, seed: 1 });
    input = await openChunkedSource(opts.input, { channel: opts.channel, time: opts.time, s3: opts.s3 });
    const dims = input.info.shape.length;
    if (dims !== manifest.network.dims) {
      throw new InputError(opts.input, `is ${dims}D but the model ${opts.modelDir} was trained on ${manifest.network.dims}D data`);
    }
    const geometry = networkGeometry(manifest.network);
    const modelWeightBytes = model.getWeights().reduce((n, w) => n + w.size * 4, 0);
    const bytesPerVoxel = estimateBytesPerVoxel(model, dims as 2 | 3, geometry.sizeMultiple);
    const dtype = opts.outputType === 'input' && output !== 'uncertainty' ? input.info.dtype : 'float32';
    const memory = planStreamMemory({
      maxMemoryBytes: opts.maxMemoryBytes,
      shape: input.info.shape,
      inputChunks: input.info.chunks,
      ...geometry,
      bytesPerVoxel,
      modelWeightBytes,
      tta: opts.tta,
      coreShape: opts.outputChunks,
    });
    const opened = input;
    return {
      manifest,
      modelHash,
      model,
      tileModel,
      input,
      geometry: { sizeMultiple: geometry.sizeMultiple, receptiveRadius: geometry.receptiveRadius },
      modelWeightBytes,
      bytesPerVoxel,
      memory,
      output,
      dtype,
      close: async () => {
        model.dispose();
        await opened.close?.();
      },
    };
  } catch (err) {
    model.dispose();
    await input?.close?.();
    throw err;
  }
}

/** The key of a level-0 chunk of an OME-Zarr written here ('/0/c/i/j' in Zarr v3, '/0/i/j' in v2) -> its index. */
function levelZeroChunkOfKey(key: string): number[] | null {
  const match = /^\/0\/(?:c\/)?(\d+(?:\/\d+)*)$/.exec(key);
  return match ? match[1].split('/').map(Number) : null;
}

/**
 * Denoises the array at `input` into a new OME-Zarr at `out` in bounded memory, then builds its
 * pyramid. Refuses an output that is, contains or lies inside the input before anything is written.
 * With `resume`, continues an interrupted run at `out` (same model and options), verifying what is there.
 * With `shard`, computes that shard's blocks only; the shard that finds all shards complete builds the
 * pyramid (two finishing at the same instant both build it, writing identical bytes).
 */
export async function denoiseUrl(opts: DenoiseUrlOptions): Promise<DenoiseChunkedResult> {
  assertOutputIsNotInput(opts.input, opts.out);
  const job = await prepareDenoise(opts);
  let writer: OmeZarrWriter | null = null;
  let store: ByteStore | null = null;
  try {
    const { input, manifest, output } = job;
    if (opts.resume || opts.shard) writer = await openOmeZarrWriter(opts.out, opts.s3);
    if (writer && writer.info.shape.join() !== input.info.shape.join()) {
      throw new OutputError(opts.out, `holds an array of shape [${writer.info.shape.join(', ')}], the input is [${input.info.shape.join(', ')}]`);
    }
    if (!writer || opts.shard) {
      // The input's own noise from a seeded sample of 4 chunks: deterministic, so every shard writes the
      // same metadata. A failed fit (e.g. a constant array) is recorded, never a reason to stop denoising.
      // The record's output name is left out: the output is where it is stored, and outputs at two paths must be equal.
      const inputNoise = await fitChunkedInputNoise(input, { sampleBlocks: 4, seed: 1 }).then(
        (fitted) => {
          const { output: _outputName, ...record } = inputNoiseRecord(fitted.nlf, opts.input, opts.out, { kind: 'chunks', chunks: fitted.chunks, seed: fitted.seed });
          return record;
        },
        (error: unknown) => ({ error: error instanceof Error ? error.message : String(error) }),
      );
      // Shards all create the output; creation is idempotent and refuses a different one (other model, options).
      writer = await createOmeZarr(opts.out, {
        shape: [...input.info.shape],
        chunks: writer ? [...writer.info.chunks] : job.memory.coreShape,
        dtype: job.dtype,
        axes: [...input.info.axes],
        placement: input.info.placement,
        ngffVersion: opts.ngffVersion ?? '0.5',
        provenance: {
          software: 'blindspot',
          version: VERSION,
          command: opts.command ?? [],
          input: opts.input,
          model: { folder: opts.modelDir, method: manifest.method, network: manifest.network, sha256: job.modelHash },
          output,
          ...(manifest.prior ? { prior: manifest.prior } : {}),
          // Noise-level functions of the training images (input units): var = a * x + b, sigma at the median.
          ...(manifest.noise ? { noise: manifest.noise.map((n) => ({ image: n.name, a: n.a, b: n.b, sigma: n.sigma, medianIntensity: n.medianIntensity })) } : {}),
          inputNoise,
        },
        window: displayWindow(manifest.normalisation),
        s3: opts.s3,
      });
    }
    store = openByteStore(opts.out, opts.s3);
    const fingerprint = runFingerprint({
      model: job.modelHash,
      tta: opts.tta === true,
      ...(opts.sampling ? { sampling: opts.sampling } : {}),
      input: { shape: input.info.shape, dtype: input.info.dtype, channel: opts.channel ?? null, time: opts.time ?? null },
      output: { kind: output, shape: writer.info.shape, chunks: writer.info.chunks, dtype: writer.info.dtype },
    });
    const result = await denoiseChunked({
      input,
      output: writer,
      model: job.tileModel,
      ...job.geometry,
      normalisation: manifest.normalisation,
      outputNormalisation: output === 'uncertainty' ? { ...manifest.normalisation, offset: 0 } : manifest.normalisation,
      maxMemoryBytes: opts.maxMemoryBytes,
      modelWeightBytes: job.modelWeightBytes,
      bytesPerVoxel: job.bytesPerVoxel,
      tta: opts.tta,
      journal: { store, fingerprint },
      resume: opts.resume,
      shard: opts.shard,
      outputChunkOfKey: levelZeroChunkOfKey,
      signal: opts.signal,
      onEvent: opts.onEvent,
    });
    if (result.allComplete) {
      opts.onEvent?.({ type: 'pyramid' });
      await writer.buildPyramid(opts.pyramidLevels === undefined ? {} : { levels: opts.pyramidLevels });
    }
    return result;
  } finally {
    await job.close();
    await writer?.close?.();
    await store?.close?.();
  }
}
