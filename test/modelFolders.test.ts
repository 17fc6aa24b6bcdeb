/**
 * Model folders written before methods/ existed still load and denoise exactly as they did: the
 * fixtures in test/fixtures/models were trained by bench/methodFingerprint.ts with the build before
 * the Method interface (commit "bench/methodFingerprint: ..."), and the hashes of what they denoised
 * then are in test/fixtures/models/denoised-hashes.json (bench/results/method-fingerprints.json held
 * them until the U-Net's default initialisation changed and the fingerprints were re-recorded).
 * Also: the registry's shape, and a method registered from outside (one object, one registerMethod call) trains through the same loop.
 */
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../backend/select.js';
import { Rng } from '../core/rng.js';
import { addGaussianNoise, syntheticCells } from '../core/synthetic.js';
import type { Shape, Volume } from '../core/volume.js';
import { loadModelFolder } from '../models/io.js';
import { denoiseVolume } from '../pipeline/denoise.js';
import { trainModel } from '../pipeline/train.js';
import { getMethod, methodNames, methods, registerMethod } from '../methods/registry.js';
import { n2v } from '../methods/n2v.js';

const fixtures = path.join(import.meta.dirname, 'fixtures', 'models');
const recordedHashes = path.join(fixtures, 'denoised-hashes.json');

let tmp: string;
beforeAll(async () => {
  // The backend the fingerprints were recorded on (one thread: no thread-count dependence).
  await initBackend({ backend: 'cpu' });
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'blindspot-folders-'));
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

/** The noisy image of bench/methodFingerprint.ts (same generator, same seed). */
function fingerprintNoisy(shape: Shape): Volume {
  const rng = new Rng(11);
  const shape3 = (shape.length === 2 ? [1, ...shape] : shape) as [number, number, number];
  const cells = syntheticCells(shape3, rng, { blobs: Math.round((shape3[1] * shape3[2]) / 50), filaments: 3 });
  const clean = cells.data.map((v) => v * 100);
  return { data: addGaussianNoise(clean, 20, rng), shape, sampleType: 'float32' };
}

describe('model folders of the format before the Method interface', () => {
  const outputs: Record<string, 'denoised' | 'uncertainty'> = {
    'n2v-2d': 'denoised',
    'structn2v-2d': 'denoised',
    'noise2info-2d': 'denoised',
    'dbsn-2d': 'denoised',
    'laine19-2d-prior-learned': 'uncertainty',
    'care-3d': 'denoised',
  };
  for (const [name, output] of Object.entries(outputs)) {
    it(`${name} loads and denoises to the same bytes as before`, async () => {
      const expected = (JSON.parse(await fs.readFile(recordedHashes, 'utf8')) as { cases: Record<string, { denoised: string }> }).cases[name].denoised;
      const { model, manifest } = await loadModelFolder(path.join(fixtures, name));
      try {
        expect(getMethod(manifest.method).name).toBe(manifest.method);
        const noisy = fingerprintNoisy((manifest.network.dims === 2 ? [40, 40] : [8, 24, 24]) as unknown as Shape);
        const denoised = await denoiseVolume(model, manifest, noisy, { output });
        const hash = createHash('sha256').update(new Uint8Array(denoised.data.buffer, denoised.data.byteOffset, denoised.data.byteLength)).digest('hex');
        expect(hash).toBe(expected);
      } finally {
        model.dispose();
      }
    });
  }
});

describe('the method registry', () => {
  it('holds the methods, each complete, under its own name', () => {
    expect(methodNames()).toEqual(['n2v', 'n2v2', 'structn2v', 'noise2self', 'laine19', 'dbsn', 'noise2info', 'neighbor2neighbor', 'n2n', 'care', 'pn2v', 'divnoising']);
    for (const [name, m] of methods) {
      expect(m.name).toBe(name);
      expect(m.summary.length).toBeGreaterThan(10);
      expect(m.paper.url).toMatch(/^https:\/\//);
      expect(m.dims).toContain(2);
    }
    expect(() => getMethod('n2x')).toThrow(/--method must be one of n2v, n2v2/);
  });

  it('a method registered from outside trains through the same loop, and its folder denoises', async () => {
    registerMethod({ ...n2v, name: 'n2v-plugin', summary: 'a copy of n2v registered by a test', network: (r) => n2v.network({ ...r, overrides: { depth: 1, filters: 4, batchNorm: false } }) });
    expect(() => registerMethod(n2v)).toThrow(/already registered/);
    const out = path.join(tmp, 'plugin');
    const noisy = fingerprintNoisy([32, 32] as unknown as Shape);
    const manifest = await trainModel({ volumes: [{ volume: noisy, name: 'noisy' }], out, method: 'n2v-plugin', steps: 2, batchSize: 2, patchShape: [16, 16], validateEvery: 2, valPatches: 2, noiseFits: false });
    expect(manifest.method).toBe('n2v-plugin');
    expect(manifest.masking).toBeDefined();
    const { model, manifest: saved } = await loadModelFolder(out);
    try {
      const denoised = await denoiseVolume(model, saved, noisy);
      expect(denoised.data.every(Number.isFinite)).toBe(true);
    } finally {
      model.dispose();
    }
  });
});
