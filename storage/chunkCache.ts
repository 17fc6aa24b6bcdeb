/**
 * A chunk cache bounded in bytes, shared by every read of a streaming run, and region reads of the
 * virtual reflect-padded array assembled from cached chunks.
 *
 * Tiles overlap by their halos, so neighbouring tiles need the same input chunks; with the cache
 * each chunk is fetched (and decompressed) about once as long as the cache holds the chunks that the
 * order of the tiles keeps in use (a streaming denoise sweeps its blocks so that they fit:
 * operators/tileGrid.ts planBlockSweep). Concurrent requests for a chunk that is being fetched
 * share that one fetch.
 */
import { type ChunkedArrayReader, chunkGrid } from './chunked.js';
import { reflectIndex, voxelCount } from '../core/volume.js';

export interface ChunkCacheStats {
  /** Requests answered from the cache or by joining a fetch already under way. */
  hits: number;
  /** Requests that started a fetch (readChunk calls). */
  misses: number;
  /** Distinct chunks fetched at least once; misses / distinct is the fetches per chunk (1 at best). */
  distinct: number;
  /** Bytes of chunk values held now (float32). */
  bytesHeld: number;
  /** Most bytes held at once. */
  peakBytes: number;
  /** Chunks dropped to stay under the bound. */
  evictions: number;
}

interface Entry {
  readonly key: string;
  readonly values: Float32Array;
}

/**
 * LRU cache of float32 chunk values keyed by reader and chunk index, bounded by `maxBytes` (values
 * only; a chunk larger than the bound is returned but not kept). Returned arrays are shared: callers
 * must not modify them.
 */
export class ChunkCache {
  readonly maxBytes: number;
  readonly stats: ChunkCacheStats = { hits: 0, misses: 0, distinct: 0, bytesHeld: 0, peakBytes: 0, evictions: 0 };
  /** Map iteration order is insertion order: the first entry is the least recently used. */
  private readonly entries = new Map<string, Entry>();
  private readonly inFlight = new Map<string, Promise<Float32Array>>();
  private readonly readerIds = new WeakMap<ChunkedArrayReader, number>();
  private nextReaderId = 0;
  /** Per reader, one bit per chunk of its grid: fetched before (an eighth of a byte per chunk, not per voxel). */
  private readonly fetchedBefore = new WeakMap<ChunkedArrayReader, Uint8Array>();

  constructor(maxBytes: number) {
    if (!(maxBytes >= 0)) throw new RangeError(`ChunkCache: maxBytes must be >= 0, got ${maxBytes}`);
    this.maxBytes = maxBytes;
  }

  private keyOf(reader: ChunkedArrayReader, index: readonly number[]): string {
    let id = this.readerIds.get(reader);
    if (id === undefined) this.readerIds.set(reader, (id = this.nextReaderId++));
    return `${id}:${index.join(',')}`;
  }

  async get(reader: ChunkedArrayReader, index: readonly number[]): Promise<Float32Array> {
    const key = this.keyOf(reader, index);
    const cached = this.entries.get(key);
    if (cached) {
      this.stats.hits++;
      // Refresh: move to the most recently used end.
      this.entries.delete(key);
      this.entries.set(key, cached);
      return cached.values;
    }
    const pending = this.inFlight.get(key);
    if (pending) {
      this.stats.hits++;
      return pending;
    }
    this.stats.misses++;
    this.countDistinct(reader, index);
    const fetch = (async () => {
      try {
        const values = await reader.readChunk(index);
        this.insert({ key, values });
        return values;
      } finally {
        this.inFlight.delete(key);
      }
    })();
    this.inFlight.set(key, fetch);
    return fetch;
  }

  private countDistinct(reader: ChunkedArrayReader, index: readonly number[]): void {
    const grid = chunkGrid(reader.info);
    // Not a chunk of the grid (the reader will say so): nothing to count.
    if (index.length !== grid.length || index.some((k, axis) => !(Number.isInteger(k) && k >= 0 && k < grid[axis]))) return;
    const ordinal = index.reduce((o, k, axis) => o * grid[axis] + k, 0);
    let bits = this.fetchedBefore.get(reader);
    if (!bits) this.fetchedBefore.set(reader, (bits = new Uint8Array(Math.ceil(grid.reduce((n, g) => n * g, 1) / 8))));
    const byte = Math.floor(ordinal / 8);
    const mask = 1 << ordinal % 8;
    if ((bits[byte] & mask) === 0) {
      bits[byte] |= mask;
      this.stats.distinct++;
    }
  }

  private insert(entry: Entry): void {
    const bytes = entry.values.byteLength;
    if (bytes > this.maxBytes) return;
    for (const [key, old] of this.entries) {
      if (this.stats.bytesHeld + bytes <= this.maxBytes) break;
      this.entries.delete(key);
      this.stats.bytesHeld -= old.values.byteLength;
      this.stats.evictions++;
    }
    this.entries.set(entry.key, entry);
    this.stats.bytesHeld += bytes;
    this.stats.peakBytes = Math.max(this.stats.peakBytes, this.stats.bytesHeld);
  }

  /** Drops every cached chunk (fetches under way still complete). */
  clear(): void {
    this.entries.clear();
    this.stats.bytesHeld = 0;
  }
}

/** Per axis of a region: for each position, the chunk (relative to the first chunk touched) and the offset in it. */
interface AxisMap {
  firstChunk: number;
  chunkCount: number;
  chunkOf: Int32Array;
  offsetIn: Int32Array;
}

function axisMap(origin: number, extent: number, n: number, chunk: number): AxisMap {
  const chunkOf = new Int32Array(extent);
  const offsetIn = new Int32Array(extent);
  let first = Infinity;
  let last = -Infinity;
  for (let i = 0; i < extent; i++) {
    const j = reflectIndex(origin + i, n);
    const c = Math.floor(j / chunk);
    chunkOf[i] = c;
    offsetIn[i] = j - c * chunk;
    first = Math.min(first, c);
    last = Math.max(last, c);
  }
  for (let i = 0; i < extent; i++) chunkOf[i] -= first;
  return { firstChunk: first, chunkCount: last - first + 1, chunkOf, offsetIn };
}

/**
 * Values of the box [origin, origin + shape) of the array extended by reflection about its first and
 * last sample on every axis (core/volume.ts reflectIndex: numpy 'reflect', repeated as often as
 * needed), C order, float32. `reader` is a YX or ZYX array; the region has the same rank. The chunks
 * it touches are fetched concurrently through `cache`.
 */
export async function readRegionReflected(
  reader: ChunkedArrayReader,
  cache: ChunkCache,
  origin: readonly number[],
  shape: readonly number[],
): Promise<Float32Array> {
  const { shape: arrayShape, chunks } = reader.info;
  const rank = arrayShape.length;
  if (rank !== 2 && rank !== 3) throw new RangeError(`readRegionReflected: the array must be YX or ZYX, got shape [${arrayShape.join(', ')}]`);
  if (origin.length !== rank || shape.length !== rank) {
    throw new RangeError(`readRegionReflected: region [${origin.join(', ')}] + [${shape.join(', ')}] does not match the array's ${rank} axes`);
  }
  const pad = <T>(v: readonly T[], fill: T): T[] => (rank === 2 ? [fill, ...v] : [...v]);
  const n3 = pad(arrayShape, 1);
  const c3 = pad(chunks, 1);
  const o3 = pad(origin, 0);
  const s3 = pad(shape, 1);
  const maps = s3.map((extent, axis) => axisMap(o3[axis], extent, n3[axis], c3[axis]));
  const [mz, my, mx] = maps;

  // Fetch every touched chunk at once; a failed fetch fails the read.
  const touched: Promise<Float32Array>[] = [];
  for (let z = 0; z < mz.chunkCount; z++) {
    for (let y = 0; y < my.chunkCount; y++) {
      for (let x = 0; x < mx.chunkCount; x++) {
        const index3 = [mz.firstChunk + z, my.firstChunk + y, mx.firstChunk + x];
        touched.push(cache.get(reader, rank === 2 ? index3.slice(1) : index3));
      }
    }
  }
  const chunkValues = await Promise.all(touched);
  for (const values of chunkValues) {
    if (values.length !== voxelCount(chunks)) {
      throw new Error(`readRegionReflected: ${reader.info.url} returned ${values.length} values for a [${chunks.join(', ')}] chunk`);
    }
  }

  // Runs along x that stay in one chunk and go forward by 1 are copied with one set().
  interface Run {
    start: number;
    length: number;
    chunk: number;
    offset: number;
    forward: boolean;
  }
  const runs: Run[] = [];
  for (let x = 0; x < s3[2]; ) {
    let end = x + 1;
    while (end < s3[2] && mx.chunkOf[end] === mx.chunkOf[x] && mx.offsetIn[end] === mx.offsetIn[end - 1] + 1) end++;
    runs.push({ start: x, length: end - x, chunk: mx.chunkOf[x], offset: mx.offsetIn[x], forward: end - x > 1 });
    x = end;
  }
  const [, cy, cx] = c3;
  const out = new Float32Array(s3[0] * s3[1] * s3[2]);
  for (let z = 0; z < s3[0]; z++) {
    for (let y = 0; y < s3[1]; y++) {
      const rowChunkBase = (mz.chunkOf[z] * my.chunkCount + my.chunkOf[y]) * mx.chunkCount;
      const rowOffset = (mz.offsetIn[z] * cy + my.offsetIn[y]) * cx;
      const outRow = (z * s3[1] + y) * s3[2];
      for (const run of runs) {
        const values = chunkValues[rowChunkBase + run.chunk];
        if (run.forward) {
          const from = rowOffset + run.offset;
          out.set(values.subarray(from, from + run.length), outRow + run.start);
        } else {
          // Single samples (reflected stretches run backwards: each is its own run).
          out[outRow + run.start] = values[rowOffset + run.offset];
        }
      }
    }
  }
  return out;
}
