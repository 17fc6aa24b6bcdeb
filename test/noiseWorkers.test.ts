/** Noise fits in piscina workers (zero-copy transfer, compiled task file) and the `blindspot noise` command. */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { Rng } from '../core/rng.js';
import { writeImage } from '../storage/index.js';
import { fitNlf } from '../noise/nlf.js';
import { sampleNoise } from '../noise/sample.js';
import { calibrateNoise } from '../noise/model.js';
import { fitNoiseInWorkers, NoisePool, noiseTaskFile } from '../workers/noisePool.js';
import { runNoise } from '../cli/noise.js';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

function noisyImage(Y: number, X: number, sigma: number, seed: number, base = 100): Float32Array {
  const rng = new Rng(seed);
  const out = new Float32Array(Y * X);
  for (let y = 0; y < Y; y++) for (let x = 0; x < X; x++) out[y * X + x] = base + (60 * x) / X + (40 * y) / Y + sigma * rng.normal();
  return out;
}

afterEach(() => vi.restoreAllMocks());

describe('noise fits in worker threads', () => {
  it('moves the sample buffer to the worker (sender detached) and fits the same NLF as in-thread', async () => {
    const data = noisyImage(96, 96, 6, 1);
    const pool = new NoisePool({ size: 1 });
    try {
      const sample = sampleNoise({ name: 'a', data, shape: [96, 96], sampleType: 'float32' });
      const reference = fitNlf(sampleNoise({ name: 'a', data, shape: [96, 96], sampleType: 'float32' }), { iterations: 100 });
      const buffer = sample.pairs.buffer;
      expect(buffer.byteLength).toBeGreaterThan(0);
      const record = await pool.fitSample(sample, { iterations: 100 });
      expect(buffer.byteLength).toBe(0); // transferred (postMessage transferList), not copied
      expect(sample.pairs.length).toBe(0);
      expect(record.sigma).toBeCloseTo(reference.sigma, 10);
      expect(Math.abs(record.sigma / 6 - 1)).toBeLessThan(0.05);
      expect(data.byteLength).toBe(96 * 96 * 4); // the caller's image stays usable
    } finally {
      await pool.close();
    }
  });

  it('fitNoiseInWorkers: one report per image, in order; errors name the image', async () => {
    const images = [4, 9, 15].map((sigma, k) => ({ name: `img${k}`, data: noisyImage(128, 128, sigma, 10 + k), shape: [128, 128] as const, sampleType: 'float32' as const }));
    const started = fitNoiseInWorkers(images, { size: 2, iterations: 100 }); // a promise to await later
    const reports = await started;
    expect(reports.map((r) => r.name)).toEqual(['img0', 'img1', 'img2']);
    reports.forEach((r, k) => expect(Math.abs(r.sigma / [4, 9, 15][k] - 1), r.name).toBeLessThan(0.06));
    await expect(fitNoiseInWorkers([{ name: 'nan.tif', data: new Float32Array(9).fill(NaN), shape: [3, 3], sampleType: 'float32' }], { size: 1 })).rejects.toThrow(/nan\.tif: has no finite values/);
  });

  it('the compiled pool runs from dist/ with its task file beside it', () => {
    const distPool = path.join(repoRoot, 'dist', 'workers', 'noisePool.js');
    expect(existsSync(distPool), 'dist/workers/noisePool.js (npm run build)').toBe(true);
    expect(noiseTaskFile()).toMatch(/dist\/workers\/noiseFitTask\.js$/);
    const script = `
      const { fitNoiseInWorkers, noiseTaskFile } = await import(${JSON.stringify('file://' + distPool)});
      const data = new Float32Array(64 * 64).map((_, i) => 50 + (i % 64) + 3 * Math.sqrt(-2 * Math.log(Math.random() || 1e-9)) * Math.cos(6.283 * Math.random()));
      const [r] = await fitNoiseInWorkers([{ name: 'x', data, shape: [64, 64], sampleType: 'float32' }], { size: 1, iterations: 50 });
      console.log(JSON.stringify({ task: noiseTaskFile(), sigma: r.sigma }));`;
    const out = JSON.parse(execFileSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' }).trim());
    expect(out.task).toBe('file://' + path.join(repoRoot, 'dist', 'workers', 'noiseFitTask.js'));
    expect(out.sigma).toBeGreaterThan(2.4);
    expect(out.sigma).toBeLessThan(3.6);
  });
});

describe('blindspot noise', () => {
  it('--json: one record per image with file, sigma, a, b; --plot-dir: one SVG per image', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'noise-cli-'));
    const files = [5, 12].map((sigma, k) => path.join(dir, `im${k}.tif`));
    await writeImage(files[0], { data: noisyImage(96, 96, 5, 3), shape: [96, 96], sampleType: 'float32' });
    await writeImage(files[1], { data: noisyImage(96, 96, 12, 4), shape: [96, 96], sampleType: 'float32' });
    const lines: string[] = [];
    vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => {
      lines.push(...String(chunk).split('\n').filter(Boolean));
      return true;
    });
    const code = await runNoise([...files, '--json', '--plot-dir', path.join(dir, 'plots'), '--workers', '1']);
    vi.restoreAllMocks();
    expect(code).toBe(0);
    const records = lines.map((l) => JSON.parse(l)).filter((r) => r.type === 'noise');
    expect(records.map((r) => r.file).sort()).toEqual([...files].sort());
    for (const r of records) {
      const sigma = r.file === files[0] ? 5 : 12;
      expect(Math.abs(r.sigma / sigma - 1), r.file).toBeLessThan(0.06);
      expect(typeof r.a).toBe('number');
      expect(Math.abs(Math.sqrt(r.a * r.medianIntensity + r.b) / sigma - 1)).toBeLessThan(0.1);
      const svg = readFileSync(r.plot, 'utf8');
      expect(svg).toMatch(/^<svg/);
      expect(svg).toContain('<polyline');
    }
  });

  it('--calibrate writes a noise model that recovers known a, b', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'noise-cal-'));
    const [N, Y, X] = [100, 32, 32];
    const a = 0.8, b = 25;
    const rng = new Rng(6);
    const stack = new Float32Array(N * Y * X);
    for (let f = 0; f < N; f++)
      for (let p = 0; p < Y * X; p++) {
        const s = 20 + 600 * ((p % X) / X) * (Math.floor(p / X) / Y + 0.5);
        stack[f * Y * X + p] = s + Math.sqrt(a * s + b) * rng.normal();
      }
    const input = path.join(dir, 'stack.npy');
    await writeImage(input, { data: stack, shape: [N, Y, X], sampleType: 'float32' });
    const out = path.join(dir, 'noise-model.json');
    vi.spyOn(process.stdout, 'write').mockImplementation(() => true);
    expect(await runNoise(['--calibrate', input, '--out', out, '--json'])).toBe(0);
    vi.restoreAllMocks();
    const model = JSON.parse(readFileSync(out, 'utf8'));
    expect(model.kind).toBe('calibrated');
    expect(Math.abs(model.a / a - 1)).toBeLessThan(0.1);
    expect(Math.abs(model.b / b - 1)).toBeLessThan(0.1);
    expect(model).toEqual(JSON.parse(JSON.stringify(calibrateNoise(input, stack, [N, Y, X]))));
  });
});
