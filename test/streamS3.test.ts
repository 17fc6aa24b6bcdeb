/**
 * Streaming denoise with S3 (a real OpenStack Swift with s3api on loopback) as source and sink:
 * equals the local run, also through a proxy failing 10% of requests (500, 503, connection reset).
 * Skips with a message when Swift is not installed.
 */
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { Rng } from '../core/rng.js';
import { defaultUNetConfig, type UNetConfig } from '../models/unet.js';
import { startFaultProxy } from '../infra/faultProxy.js';
import { SWIFT_MISSING_MESSAGE, startLocalS3, swiftAvailable, type LocalS3 } from '../infra/localS3.js';
import { chunkGrid } from '../storage/chunked.js';
import { createOmeZarr } from '../storage/ome.js';
import { openChunkedSource } from '../storage/open.js';
import type { S3Settings } from '../storage/s3.js';
import { denoiseUrl, parseByteSize } from '../pipeline/streamDenoise.js';
import { saveUntrainedModel } from './fixtures/untrainedModel.js';

if (!swiftAvailable()) console.log(`streamS3: skipped: ${SWIFT_MISSING_MESSAGE}`);

describe.skipIf(!swiftAvailable())('streaming denoise on S3 (local Swift)', () => {
  let s3: LocalS3;
  let tmp = '';
  let modelDir = '';
  const shape = [60, 75];
  const cfg: UNetConfig = { ...defaultUNetConfig(2), filters: 4 };
  const normalisation = { mode: 'meanstd' as const, offset: 100, scale: 20 };

  async function writeInput(url: string, settings?: S3Settings): Promise<void> {
    const writer = await createOmeZarr(url, {
      shape,
      chunks: [16, 16],
      dtype: 'float32',
      axes: [{ name: 'y', type: 'space' }, { name: 'x', type: 'space' }],
      placement: { scale: [1, 1], translation: [0, 0] },
      s3: settings,
    });
    const rng = new Rng(3);
    const grid = chunkGrid(writer.info);
    for (let y = 0; y < grid[0]; y++) for (let x = 0; x < grid[1]; x++) await writer.writeChunk([y, x], Float32Array.from({ length: 256 }, () => 100 + 20 * rng.normal()));
  }

  async function readAll(url: string, settings?: S3Settings): Promise<Float32Array[]> {
    const reader = await openChunkedSource(url, { s3: settings });
    const grid = chunkGrid(reader.info);
    const chunks: Float32Array[] = [];
    for (let y = 0; y < grid[0]; y++) for (let x = 0; x < grid[1]; x++) chunks.push(await reader.readChunk([y, x]));
    return chunks;
  }

  beforeAll(async () => {
    await tf.setBackend('cpu');
    tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'blindspot-stream-s3-'));
    s3 = await startLocalS3({ buckets: ['blindspot'], exportCredentials: true });
    modelDir = path.join(tmp, 'model');
    await saveUntrainedModel(modelDir, cfg, normalisation, 2);
  }, 120_000);

  afterAll(async () => {
    await s3?.stop();
    if (tmp) await fs.rm(tmp, { recursive: true, force: true });
  });

  let local: Float32Array[] = [];

  test('S3 source -> S3 sink equals local -> local, also through a proxy failing 10% of requests', async () => {
    const settings = { endpoint: s3.endpoint, region: s3.region };
    const localIn = path.join(tmp, 'in.zarr');
    await writeInput(localIn);
    await writeInput('s3://blindspot/raw/in.zarr', settings);
    const common = { modelDir, maxMemoryBytes: parseByteSize('1GiB'), outputChunks: [16, 16] };
    await denoiseUrl({ ...common, input: localIn, out: path.join(tmp, 'out.zarr') });
    local = await readAll(path.join(tmp, 'out.zarr'));

    await expect(denoiseUrl({ ...common, input: 's3://blindspot/raw/in.zarr', out: 's3://blindspot/raw/in.zarr/den.zarr', s3: settings })).rejects.toThrow(/overwrite the input/);
    await denoiseUrl({ ...common, input: 's3://blindspot/raw/in.zarr', out: 's3://blindspot/denoised/out.zarr', s3: settings });
    const remote = await readAll('s3://blindspot/denoised/out.zarr', settings);
    expect(remote.length).toBe(local.length);
    remote.forEach((chunk, i) => expect(Buffer.compare(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength), Buffer.from(local[i].buffer, local[i].byteOffset, local[i].byteLength))).toBe(0));

    const proxy = await startFaultProxy(s3.endpoint, { failureRate: 0.1, seed: 7 });
    try {
      const faulty = { endpoint: proxy.endpoint, region: s3.region, maxAttempts: 10 };
      await denoiseUrl({ ...common, input: 's3://blindspot/raw/in.zarr', out: 's3://blindspot/denoised/faulty.zarr', s3: faulty });
      console.log(`fault proxy: ${JSON.stringify(proxy.stats)}`);
      const viaProxy = await readAll('s3://blindspot/denoised/faulty.zarr', settings);
      viaProxy.forEach((chunk, i) => expect(Buffer.compare(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength), Buffer.from(local[i].buffer, local[i].byteOffset, local[i].byteLength))).toBe(0));
      expect(Object.values(proxy.stats.failed).reduce((a, b) => a + b, 0)).toBeGreaterThan(0);
    } finally {
      await proxy.stop();
    }
  }, 240_000);

  test('through a proxy that stalls responses and truncates bodies: each stalled request times out, is retried, and the output is identical', async () => {
    expect(local.length).toBeGreaterThan(0);
    const proxy = await startFaultProxy(s3.endpoint, { failureRate: 0.12, seed: 11, kinds: ['stall', 'truncate'] });
    try {
      // Short bounds so a stall costs half a second; the defaults (5 s, 30 s, 8 attempts) are the same mechanism.
      const faulty = { endpoint: proxy.endpoint, region: s3.region, maxAttempts: 10, requestTimeoutMs: 500, connectTimeoutMs: 1000, baseBackoffMs: 10 };
      const common = { modelDir, maxMemoryBytes: parseByteSize('1GiB'), outputChunks: [16, 16] };
      const t0 = performance.now();
      await denoiseUrl({ ...common, input: 's3://blindspot/raw/in.zarr', out: 's3://blindspot/denoised/stalled.zarr', s3: faulty });
      console.log(`stall/truncate proxy: ${JSON.stringify(proxy.stats)} in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
      expect(proxy.stats.failed.stall).toBeGreaterThan(0);
      expect(proxy.stats.failed.truncate).toBeGreaterThan(0);
      const viaProxy = await readAll('s3://blindspot/denoised/stalled.zarr', { endpoint: s3.endpoint, region: s3.region });
      expect(viaProxy.length).toBe(local.length);
      viaProxy.forEach((chunk, i) => expect(Buffer.compare(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength), Buffer.from(local[i].buffer, local[i].byteOffset, local[i].byteLength))).toBe(0));
    } finally {
      await proxy.stop();
    }
  }, 240_000);
});
