import { afterAll, expect, test } from 'vitest';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as zarr from 'zarrita';
import { Rng } from '../core/rng.js';
import { FileSystemStore } from '../storage/fsStore.js';
import { createZarrArray, openZarrArray } from '../storage/zarr.js';
import { MIN_WORKER_BYTES, codecThreads, defaultCodecThreads, setCodecThreads, zstdDecode, zstdEncode } from '../workers/codecPool.js';
import { zstdDecodeHere, zstdEncodeHere } from '../workers/codecTask.js';

afterAll(async () => {
  await setCodecThreads(defaultCodecThreads());
});

/** Noise on a smooth ramp (compresses a little, like image data), 4 bytes per value. */
function chunkBytes(values: number, seed: number): Uint8Array {
  const rng = new Rng(seed);
  const data = new Float32Array(values);
  for (let i = 0; i < values; i++) data[i] = Math.round(i / 97) + Math.round(rng.normal() * 4);
  return new Uint8Array(data.buffer);
}

test('zstd in the worker pool gives the bytes of the calling thread, and moves only what it is handed', async () => {
  await setCodecThreads(1);
  const raw = chunkBytes(4 * MIN_WORKER_BYTES / 4, 1);
  const here = await zstdEncodeHere(raw, 3);
  // Not owned: the caller's bytes stay.
  const pooled = await zstdEncode(raw, 3);
  expect(raw.byteLength).toBe(4 * MIN_WORKER_BYTES);
  expect(Buffer.from(pooled).equals(Buffer.from(here))).toBe(true);
  // Decoding a Node Buffer (what the file store returns) leaves it whole: it is copied, not moved.
  const stored = Buffer.from(pooled);
  const decoded = await zstdDecode(stored);
  expect(stored.byteLength).toBe(pooled.byteLength);
  expect(Buffer.from(decoded).equals(Buffer.from(raw))).toBe(true);
  // Owned: moved to the worker (empty here afterwards), same bytes.
  const owned = raw.slice();
  const moved = await zstdEncode(owned, 3, { owned: true });
  expect(owned.byteLength).toBe(0);
  expect(Buffer.from(moved).equals(Buffer.from(here))).toBe(true);
  // A corrupt frame is an error, not a hang.
  await expect(zstdDecode(new Uint8Array(pooled.subarray(0, pooled.byteLength >> 1)))).rejects.toThrow();
  expect(Buffer.from(await zstdDecodeHere(here)).equals(Buffer.from(raw))).toBe(true);
}, 30_000);

test('a Zarr array written and read with codecs in workers holds the bytes written without them', async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'blindspot-codecs-'));
  try {
    const shape = [3, 160, 150];
    const chunks = [1, 160, 128]; // 80 KiB of float32 per chunk: past the pool's threshold
    const rng = new Rng(3);
    const values = Float32Array.from({ length: shape[0] * shape[1] * shape[2] }, (_, i) => (i % 150) + rng.normal());
    const stored: Record<string, Uint8Array> = {};
    for (const threads of [0, 1]) {
      await setCodecThreads(threads);
      expect(codecThreads()).toBe(threads);
      const store = new FileSystemStore(path.join(dir, `t${threads}.zarr`));
      const writer = await createZarrArray(store, '/', { shape, chunks, dtype: 'float32', zarrVersion: 3 });
      for (let z = 0; z < shape[0]; z++) {
        for (const x of [0, 1]) {
          const chunk = new Float32Array(160 * 128);
          for (let y = 0; y < 160; y++) for (let k = 0; k < 128; k++) if (x * 128 + k < 150) chunk[y * 128 + k] = values[(z * 160 + y) * 150 + x * 128 + k];
          stored[`${threads}/${z}/${x}`] = await writer.writeChunk([z, 0, x], chunk);
        }
      }
      const reader = await openZarrArray(store);
      const back = await zarr.get(reader.array);
      expect(Array.from((back.data as Float32Array).subarray(0, 1000))).toEqual(Array.from(values.subarray(0, 1000)));
      expect((back.data as Float32Array).every((v, i) => v === values[i])).toBe(true);
    }
    for (const key of Object.keys(stored).filter((k) => k.startsWith('0/'))) {
      expect(Buffer.from(stored[key]).equals(Buffer.from(stored[`1/${key.slice(2)}`]))).toBe(true);
    }
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
}, 60_000);
