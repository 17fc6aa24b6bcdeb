/**
 * A streamed OME-Zarr output records its own input's noise (a fit from a seeded sample of chunks) in
 * the provenance attribute, beside the training images' fits: the issue's "the NLF of every image
 * ... in the output's metadata" for inputs too large to fit whole.
 */
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createOmeZarr } from '../storage/ome.js';
import { chunkGrid } from '../storage/chunked.js';
import { Rng } from '../core/rng.js';
import { voxelCount } from '../core/volume.js';
import { defaultUNetConfig } from '../models/unet.js';
import { denoiseUrl, parseByteSize } from '../pipeline/streamDenoise.js';
import { cutChunk } from './fixtures/stream-arrays.js';
import { saveUntrainedModel } from './fixtures/untrainedModel.js';

let dir = '';
const SIGMA = 8;

async function writeArray(name: string, shape: number[], chunks: number[], data: Float32Array): Promise<string> {
  const url = path.join(dir, name);
  const writer = await createOmeZarr(url, {
    shape, chunks, dtype: 'float32', ngffVersion: '0.5',
    axes: [{ name: 'y', type: 'space' }, { name: 'x', type: 'space' }], placement: { scale: [1, 1], translation: [0, 0] },
  });
  const grid = chunkGrid(writer.info);
  for (let i = 0; i < voxelCount(grid); i++) {
    const index = [Math.floor(i / grid[1]), i % grid[1]];
    await writer.writeChunk(index, cutChunk(data, shape, chunks, index));
  }
  await writer.close?.();
  return url;
}

async function provenanceOf(out: string): Promise<Record<string, unknown>> {
  const doc = JSON.parse(await fs.readFile(path.join(out, 'zarr.json'), 'utf8')) as { attributes: { blindspot: Record<string, unknown> } };
  return doc.attributes.blindspot;
}

beforeAll(async () => {
  dir = await fs.realpath(await fs.mkdtemp(path.join(os.tmpdir(), 'blindspot-input-noise-')));
  await tf.setBackend('cpu');
  await saveUntrainedModel(path.join(dir, 'model'), { ...defaultUNetConfig(2), filters: 4 }, { mode: 'meanstd', offset: 500, scale: 100 }, 3);
});

afterAll(async () => {
  if (dir) await fs.rm(dir, { recursive: true, force: true });
});

describe('streamed output metadata: the input noise', () => {
  it('records the input NLF fitted from a sample of chunks, sigma within 5% of the noise added', async () => {
    const shape = [192, 192];
    const rng = new Rng(5);
    // A smooth ramp plus Gaussian noise of known sigma (float, not clipped).
    const data = Float32Array.from({ length: voxelCount(shape) }, (_, i) => 300 + (i % 192) * 2 + Math.floor(i / 192) + SIGMA * rng.normal());
    const input = await writeArray('noisy.zarr', shape, [64, 64], data);
    const out = path.join(dir, 'denoised.zarr');
    await denoiseUrl({ input, out, modelDir: path.join(dir, 'model'), maxMemoryBytes: parseByteSize('1GiB'), outputChunks: [64, 64] });
    const provenance = await provenanceOf(out);
    const record = provenance.inputNoise as { input: string; sigma: number; sampled: { kind: string; chunks: number[][]; seed: number } };
    expect(record.input).toBe(input);
    expect(record.sampled.kind).toBe('chunks');
    expect(record.sampled.chunks.length).toBe(4);
    expect(Math.abs(record.sigma / SIGMA - 1)).toBeLessThan(0.05);
  }, 120_000);

  it('records a failed fit as an error and still denoises (a constant input)', async () => {
    const shape = [64, 64];
    const input = await writeArray('constant.zarr', shape, [32, 32], new Float32Array(voxelCount(shape)).fill(700));
    const out = path.join(dir, 'constant-denoised.zarr');
    const result = await denoiseUrl({ input, out, modelDir: path.join(dir, 'model'), maxMemoryBytes: parseByteSize('1GiB'), outputChunks: [32, 32] });
    expect(result.allComplete).toBe(true);
    const provenance = await provenanceOf(out);
    expect(provenance.inputNoise).toBeDefined();
    // A constant image either falls back to a global estimate (sigma 0) or records why it could not be fitted.
    const record = provenance.inputNoise as { sigma?: number; error?: string };
    if (record.error === undefined) expect(record.sigma).toBeLessThan(1e-3);
    else expect(record.error).toMatch(/\S/);
  }, 120_000);
});
