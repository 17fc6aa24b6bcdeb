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
import v8 from 'node:v8';
import vm from 'node:vm';
import { Observable, Subject, lastValueFrom, tap } from 'rxjs';
import { InputError, OutputError } from '../core/errors.js';
import type { Shape } from '../core/volume.js';
import { voxelCount } from '../core/volume.js';
import type { Normalisation } from '../models/normalise.js';
import { readTiles } from '../operators/readTiles.js';
import { type TileModel, predictTilePixels } from '../operators/predictTiles.js';
import { stitchWithBlending } from '../operators/stitchWithBlending.js';
import { type BlockSweep, type TilePlan, type TileSpec, planBlockSweep, planTileGrid, readChunkSpans, sweepBlocks, tileSpecAt } from '../operators/tileGrid.js';
import { sha256Hex, writeChunks } from '../operators/writeChunks.js';
import type { ByteStore } from '../storage/byteStore.js';
import { ChunkCache, type ChunkCacheStats, readRegionReflected } from '../storage/chunkCache.js';
import { type ChunkedArrayReader, type ChunkedArrayWriter, chunkGrid } from '../storage/chunked.js';
import { estimateBytesPerVoxel } from './predict.js';
import { type ShardSpec, shardBlockRange, shardJournalPrefix } from './shard.js';
import { type StreamGeometry, type StreamMemoryPlan, MiB, planStreamMemory } from './streamMemory.js';
import { RunJournal, JOURNAL_PREFIX } from './runJournal.js';
import { readShardRuns } from './shardRuns.js';
import { assertOutputIsNotInput } from './outputLocation.js';

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
