import { createHash } from 'node:crypto';
import { type OperatorFunction, mergeMap } from 'rxjs';
import type { ChunkedArrayWriter } from '../storage/chunked.js';
import { voxelCount } from '../core/volume.js';
import type { OutputBlock } from './stitchWithBlending.js';

/** A chunk stored by writeChunks. */
export interface WrittenChunk {
  readonly index: readonly number[];
  /** sha256 (hex) of the bytes the store holds for the chunk (encoded). */
  readonly sha256: string;
  readonly storedBytes: number;
}

export interface WriteChunksOptions {
  writer: ChunkedArrayWriter;
  /** Chunk writes in flight at once; default 4. */
  concurrency?: number;
  /** Applied to a block's values before storing (e.g. undo the normalisation); must not change the length. */
  transform?: (values: Float32Array) => Float32Array;
  /** Called after the chunk is stored, before it is emitted (e.g. to journal its checksum). */
  record?: (chunk: WrittenChunk) => void | Promise<void>;
}

export function sha256Hex(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/**
 * The chunk index of an output block, checking that the block is exactly one chunk of `writer`
 * clipped to the array (blocks are planned with core shape = chunk shape).
 */
export function chunkIndexOfBlock(block: OutputBlock, writer: ChunkedArrayWriter): number[] {
  const { chunks, shape } = writer.info;
  return block.region.origin.map((o, axis) => {
    const c = chunks[axis];
    const index = o / c;
    const expectedExtent = Math.min(c, shape[axis] - o);
    if (!Number.isInteger(index) || block.region.shape[axis] !== expectedExtent) {
      throw new Error(
        `writeChunks: block at [${block.region.origin.join(', ')}] of shape [${block.region.shape.join(', ')}] is not one chunk of ${writer.info.url} (chunks [${chunks.join(', ')}])`,
      );
    }
    return index;
  });
}

/** A clipped block's values placed in a whole chunk (C order); the part outside the array is 0. */
export function padToChunk(values: Float32Array, extent: readonly number[], chunks: readonly number[]): Float32Array {
  if (extent.every((e, axis) => e === chunks[axis])) return values;
  const pad3 = (v: readonly number[]): number[] => (v.length === 2 ? [1, ...v] : [...v]);
  const [ez, ey, ex] = pad3(extent);
  const [, cy, cx] = pad3(chunks);
  const out = new Float32Array(voxelCount(chunks));
  for (let z = 0; z < ez; z++) {
    for (let y = 0; y < ey; y++) {
      const src = (z * ey + y) * ex;
      out.set(values.subarray(src, src + ex), (z * cy + y) * cx);
    }
  }
  return out;
}

/**
 * Finished output blocks -> whole chunks stored with `writer` (atomic per chunk), at most
 * `concurrency` writes at once. Each block must be exactly one output chunk (clipped at the array's
 * end). Emits, per chunk, the checksum of the stored bytes after `record` has run.
 */
export function writeChunks(opts: WriteChunksOptions): OperatorFunction<OutputBlock, WrittenChunk> {
  const concurrency = opts.concurrency ?? 4;
  if (!Number.isInteger(concurrency) || concurrency < 1) throw new RangeError(`writeChunks: concurrency must be a positive integer, got ${concurrency}`);
  return mergeMap(async (block: OutputBlock) => {
    const index = chunkIndexOfBlock(block, opts.writer);
    const values = opts.transform ? opts.transform(block.data) : block.data;
    if (values.length !== block.data.length) throw new Error(`writeChunks: transform changed the block's length (${block.data.length} -> ${values.length})`);
    const stored = await opts.writer.writeChunk(index, padToChunk(values, block.region.shape, opts.writer.info.chunks));
    const chunk: WrittenChunk = { index, sha256: sha256Hex(stored), storedBytes: stored.byteLength };
    await opts.record?.(chunk);
    return chunk;
  }, concurrency);
}
