/**
 * The history of a streamed denoise, kept in the output itself so that a report can be built from the
 * output alone, after every shard has finished: per chunk the time, throughput, ETA, input-chunk
 * fetches and the process's resident memory; per run segment (a first run, each resume) the cache
 * statistics and peak memory. One record per shard (or one for an unsharded run) under
 * `/.blindspot-denoise/history/`, rewritten at the end of each segment, earlier segments kept.
 * The journal of chunk checksums (streamDenoise.ts RunJournal) is deleted when a run completes; this
 * is not, and nothing reads it to decide what to compute.
 */
import os from 'node:os';
import type { ByteStore } from '../storage/byteStore.js';
import type { ChunkCacheStats } from '../storage/chunkCache.js';
import type { ShardSpec } from './shard.js';

export const HISTORY_PREFIX = '/.blindspot-denoise/history';

/** One chunk written. `fetches`: input chunks fetched (cache misses) since the previous chunk of this segment. */
export interface ChunkHistoryEntry {
  index: number[];
  /** Chunks done in this run (or shard), skipped ones included, after this one. */
  done: number;
  total: number;
  /** Seconds since this segment started. */
  seconds: number;
  megavoxelsPerSecond: number;
  etaSeconds: number | null;
  fetches: number | null;
  /** Resident set size of the process when the chunk was written, bytes. */
  rssBytes: number;
}

export interface HistorySegment {
  /** ISO time the segment started. */
  started: string;
  seconds: number;
  chunksSkipped: number;
  chunksWritten: number;
  interrupted: boolean;
  /** Input chunk fetches per distinct input chunk read (1 at best). */
  fetchesPerChunk: number | null;
  cache: ChunkCacheStats | null;
  /** Largest resident set size seen during the segment (sampled at each chunk and at the end), bytes. */
  peakRssBytes: number;
  /** The memory bound the run was given, bytes. */
  maxMemoryBytes: number;
  machine: { hostname: string; cpus: number; cpuModel: string; totalMemoryBytes: number; platform: string; node: string };
  backend?: string;
  chunks: ChunkHistoryEntry[];
}

export interface RunHistory {
  format: 'blindspot-denoise-history';
  version: 1;
  shard: ShardSpec | null;
  /** Blocks of this run (of this shard when sharded). */
  chunksTotal: number;
  segments: HistorySegment[];
}

export function historyKey(shard: ShardSpec | undefined): string {
  return `${HISTORY_PREFIX}/${shard ? `shard-${shard.index}-of-${shard.count}` : 'run'}.json`;
}

/** Every history record of an output (all shards), ordered by shard index. */
export async function readRunHistories(store: ByteStore): Promise<RunHistory[]> {
  const records: RunHistory[] = [];
  for await (const key of store.list(`${HISTORY_PREFIX}/`)) {
    if (!key.endsWith('.json')) continue;
    const record = await readHistory(store, key);
    if (record) records.push(record);
  }
  return records.sort((a, b) => (a.shard?.index ?? -1) - (b.shard?.index ?? -1));
}

async function readHistory(store: ByteStore, key: string): Promise<RunHistory | null> {
  const bytes = await store.get(key);
  if (!bytes) return null;
  try {
    const record = JSON.parse(Buffer.from(bytes).toString('utf8')) as RunHistory;
    return record.format === 'blindspot-denoise-history' ? record : null;
  } catch {
    return null; // A torn record: the report says the history is missing, the output is unaffected.
  }
}

/** Collects one segment from the run's events, then appends it to the stored record. */
export class RunHistoryRecorder {
  private readonly started = new Date().toISOString();
  private readonly chunks: ChunkHistoryEntry[] = [];
  private lastFetches = 0;
  private peakRss = process.memoryUsage.rss();
  private chunksTotal = 0;
  private chunksSkipped = 0;

  constructor(
    private readonly store: ByteStore,
    private readonly shard: ShardSpec | undefined,
    private readonly maxMemoryBytes: number,
    private readonly backend?: string,
  ) {}

  /** Feed every event of denoiseChunked; others are ignored. */
  observe(event: { type: string; [key: string]: unknown }): void {
    if (event.type === 'stream-start') {
      this.chunksTotal = event.chunksTotal as number;
      this.chunksSkipped = event.chunksDone as number;
    } else if (event.type === 'chunk') {
      const rss = process.memoryUsage.rss();
      this.peakRss = Math.max(this.peakRss, rss);
      const fetchesSoFar = event.inputFetches as number | undefined;
      const fetches = fetchesSoFar === undefined ? null : fetchesSoFar - this.lastFetches;
      if (fetchesSoFar !== undefined) this.lastFetches = fetchesSoFar;
      this.chunks.push({
        index: [...(event.index as number[])],
        done: event.done as number,
        total: event.total as number,
        seconds: event.seconds as number,
        megavoxelsPerSecond: event.megavoxelsPerSecond as number,
        etaSeconds: event.etaSeconds as number | null,
        fetches,
        rssBytes: rss,
      });
    }
  }

  /** Appends this segment to the shard's stored record. */
  async save(result: { chunksWritten: number; interrupted: boolean; cache: ChunkCacheStats }, seconds: number): Promise<void> {
    this.peakRss = Math.max(this.peakRss, process.memoryUsage.rss());
    const key = historyKey(this.shard);
    const previous = await readHistory(this.store, key);
    const cpus = os.cpus();
    const segment: HistorySegment = {
      started: this.started,
      seconds,
      chunksSkipped: this.chunksSkipped,
      chunksWritten: result.chunksWritten,
      interrupted: result.interrupted,
      fetchesPerChunk: result.cache.distinct > 0 ? result.cache.misses / result.cache.distinct : null,
      cache: { ...result.cache },
      peakRssBytes: this.peakRss,
      maxMemoryBytes: this.maxMemoryBytes,
      machine: { hostname: os.hostname(), cpus: cpus.length, cpuModel: cpus[0]?.model ?? 'unknown', totalMemoryBytes: os.totalmem(), platform: `${os.platform()} ${os.arch()}`, node: process.version },
      ...(this.backend ? { backend: this.backend } : {}),
      chunks: this.chunks,
    };
    const record: RunHistory = {
      format: 'blindspot-denoise-history',
      version: 1,
      shard: this.shard ? { index: this.shard.index, count: this.shard.count } : null,
      chunksTotal: this.chunksTotal,
      segments: [...(previous?.segments ?? []), segment],
    };
    await this.store.set(key, new TextEncoder().encode(JSON.stringify(record) + '\n'));
  }
}
