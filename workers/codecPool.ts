/**
 * Chunk codecs off the main thread: a process-wide piscina pool that zstd-compresses and
 * -decompresses chunk bytes for the Zarr reader and writer (storage/zarr.ts). In a streaming denoise
 * the main thread also reads, stitches and writes, and the model runs in its own thread
 * (engines/onnxWorkerSession.ts); numcodecs' zstd copies every byte into the wasm heap in a JS loop
 * and then compresses, which left in the main thread made it the slowest stage once the model got
 * fast (docs/onnx-engine.md, the pipeline profile).
 *
 * Started on first use; idle workers do not keep the process alive (piscina unreferences them) and
 * end after a few seconds idle. Chunks under MIN_WORKER_BYTES stay in the calling thread (a message
 * round trip costs more than their codec). Same code and level either way: the same bytes.
 * BLINDSPOT_CODEC_THREADS=N sets the pool size; 0 (the default on 2 cores) keeps every codec call
 * in the calling thread.
 */
import { existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Piscina } from 'piscina';
import { PACKAGE_ROOT } from '../core/version.js';
import { type CodecTask, zstdDecodeHere, zstdEncodeHere } from './codecTask.js';

/** Chunks smaller than this (raw bytes to encode; a quarter of it, encoded bytes to decode) are coded in the calling thread. */
export const MIN_WORKER_BYTES = 64 * 1024;

/**
 * Default pool size: the cores but two (the main thread's and at least one for the engine), at most
 * 4; 0 on a machine of 2 cores or fewer. Measured on 2 cores (docs/onnx-engine.md): a worker there
 * only adds threads that preempt the engine's, and end to end was 5-15% slower than with zstd in the
 * main thread, which (with stitching copy-free) keeps pace with a 1-thread engine. With more cores
 * the workers take the codecs the main thread alone could not keep up with (~1 CPU s per 9 Mvoxel
 * read and written as float32 zstd, i.e. ~9 Mvoxel/s: less than a GPU model delivers).
 * BLINDSPOT_CODEC_THREADS=N overrides it.
 */
export function defaultCodecThreads(): number {
  const fromEnv = process.env.BLINDSPOT_CODEC_THREADS;
  if (fromEnv !== undefined && fromEnv !== '') {
    const n = Number(fromEnv);
    if (Number.isInteger(n) && n >= 0) return n;
  }
  return Math.max(0, Math.min(4, os.availableParallelism() - 2));
}

let threads = defaultCodecThreads();
let pool: Piscina<CodecTask, Uint8Array> | null = null;

/** The compiled task next to this module, or under the package's dist/ when this runs from source (vitest). */
function codecTaskFile(): string {
  const beside = fileURLToPath(new URL('./codecTask.js', import.meta.url));
  if (existsSync(beside)) return pathToFileURL(beside).href;
  const compiled = path.join(PACKAGE_ROOT, 'dist', 'workers', 'codecTask.js');
  if (existsSync(compiled)) return pathToFileURL(compiled).href;
  throw new Error(`the codec worker task is not compiled: neither ${beside} nor ${compiled} exists (run npm run build)`);
}

/** Worker threads chunk codecs use (0: the calling thread). */
export function codecThreads(): number {
  return threads;
}

/** Sets the pool size for later calls (0: code in the calling thread); an existing pool ends after its tasks. */
export async function setCodecThreads(n: number): Promise<void> {
  if (!Number.isInteger(n) || n < 0) throw new RangeError(`codec threads must be a non-negative integer, got ${n}`);
  threads = n;
  const old = pool;
  pool = null;
  await old?.destroy();
}

function codecPool(): Piscina<CodecTask, Uint8Array> {
  pool ??= new Piscina<CodecTask, Uint8Array>({
    filename: codecTaskFile(),
    minThreads: 0,
    maxThreads: threads,
    idleTimeout: 5000,
  });
  return pool;
}

/** The bytes in a buffer of their own, to move to a worker: `owned` arrays are moved as they are, others copied. */
function bufferToMove(bytes: Uint8Array, owned: boolean): ArrayBuffer {
  const whole = bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength && bytes.buffer instanceof ArrayBuffer;
  if (owned && whole) return bytes.buffer as ArrayBuffer;
  // Not bytes.slice(): on a Node Buffer that is a view of the same memory (often Node's shared pool).
  const copy = new Uint8Array(bytes.byteLength);
  copy.set(bytes);
  return copy.buffer;
}

/**
 * zstd-compresses `raw` at `level`. With `owned` the caller hands `raw` over: its buffer may be moved
 * to a worker (and be empty here afterwards) instead of copied.
 */
export function zstdEncode(raw: Uint8Array, level: number, opts: { owned?: boolean } = {}): Promise<Uint8Array> {
  if (threads === 0 || raw.byteLength < MIN_WORKER_BYTES) return zstdEncodeHere(raw, level);
  const bytes = bufferToMove(raw, opts.owned === true);
  return codecPool().run({ op: 'zstd-encode', level, bytes }, { transferList: [bytes] });
}

/** Decompresses one zstd frame; `encoded` is left as it was. */
export function zstdDecode(encoded: Uint8Array): Promise<Uint8Array> {
  // Compressed size: a chunk that compresses well is still a large one to decompress.
  if (threads === 0 || encoded.byteLength < MIN_WORKER_BYTES / 4) return zstdDecodeHere(encoded);
  const bytes = bufferToMove(encoded, false);
  return codecPool().run({ op: 'zstd-decode', bytes }, { transferList: [bytes] });
}
