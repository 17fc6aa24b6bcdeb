/** The noise of each denoised input: `<output>.noise.json` beside file outputs, and fits of chunked inputs from a few chunks. */
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../backend/select.js';
import { OutputError } from '../core/errors.js';
import { Rng } from '../core/rng.js';
import type { UNetConfig } from '../models/unet.js';
import { fitChunkedInputNoise, noiseSidecarPath, type InputNoiseRecord } from '../noise/inputNoise.js';
import { denoiseFiles, type DenoiseEvent } from '../pipeline/denoise.js';
import { writeImage } from '../storage/index.js';
import { MemoryArrayReader } from './fixtures/stream-arrays.js';
import { saveUntrainedModel } from './fixtures/untrainedModel.js';

let tmp: string;
let modelDir: string;
beforeAll(async () => {
  await initBackend({ backend: 'cpu' });
  tmp = mkdtempSync(path.join(os.tmpdir(), 'noise-sidecar-'));
  modelDir = path.join(tmp, 'model');
  const cfg: UNetConfig = { dims: 2, depth: 1, filters: 2, kernelSize: 3, batchNorm: false, variant: 'n2v' };
  await saveUntrainedModel(modelDir, cfg, { mode: 'meanstd', offset: 100, scale: 30 }, 5);
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** Smooth shading plus Gaussian noise of known sigma; `shape` [Y, X] or [Z, Y, X]. */
function noisyScene(shape: readonly number[], sigma: number, seed: number): Float32Array {
  const rng = new Rng(seed);
  const [Z, Y, X] = shape.length === 3 ? shape : [1, shape[0], shape[1]];
  const out = new Float32Array(Z * Y * X);
  for (let z = 0; z < Z; z++)
    for (let y = 0; y < Y; y++)
      for (let x = 0; x < X; x++) out[(z * Y + y) * X + x] = 100 + 40 * Math.sin(x / 37 + z) * Math.cos(y / 29) + (20 * x) / X + sigma * rng.normal();
  return out;
}

describe('blindspot denoise records each input noise beside its output', () => {
  it('writes <output>.noise.json whose sigma matches the input noise within 5%, for TIFF and PNG-to-TIFF outputs', async () => {
    const inputs = [path.join(tmp, 'a.tif'), path.join(tmp, 'b.png')];
    const sigmas = [6, 15];
    await writeImage(inputs[0], { data: noisyScene([160, 192], sigmas[0], 1), shape: [160, 192], sampleType: 'float32' });
    // uint8 PNG (values 20..210: nothing clipped; rounding adds 1/12 to the variance, 0.02% of sigma 15).
    await writeImage(inputs[1], { data: noisyScene([128, 128], sigmas[1], 2), shape: [128, 128], sampleType: 'uint8' });
    const events: DenoiseEvent[] = [];
    const outDir = path.join(tmp, 'out');
    const outputs = await denoiseFiles({ modelDir, inputs, outDir, onEvent: (e) => events.push(e) });
    for (let k = 0; k < inputs.length; k++) {
      const sidecar = noiseSidecarPath(outputs[k]);
      expect(sidecar).toBe(path.join(outDir, `${path.basename(inputs[k]).replace('.png', '.tif')}.noise.json`));
      const record = JSON.parse(readFileSync(sidecar, 'utf8')) as InputNoiseRecord;
      expect(record.format).toBe('blindspot-input-noise');
      expect(record.input).toBe(inputs[k]);
      expect(record.output).toBe(path.basename(outputs[k]));
      expect(record.method).toBe('nlf');
      expect(record.sampled).toEqual({ kind: 'whole-image' });
      expect(Math.abs(record.sigma / sigmas[k] - 1), `${inputs[k]}: ${record.sigma}`).toBeLessThan(0.05);
      expect(record.percentiles.map((p) => p.p)).toEqual([1, 25, 50, 75, 99]);
      expect(record.curve).toHaveLength(33);
      for (const point of record.curve) expect(Math.abs(point.sigma / sigmas[k] - 1), `curve at ${point.intensity}`).toBeLessThan(0.15);
      expect(Math.abs(Math.sqrt(record.a * record.medianIntensity + record.b) / sigmas[k] - 1)).toBeLessThan(0.1);
      expect(record.nlf.format).toBe('blindspot-nlf');
    }
    const noiseEvents = events.filter((e): e is Extract<DenoiseEvent, { type: 'noise' }> => e.type === 'noise');
    expect(noiseEvents.map((e) => e.file).sort()).toEqual([...inputs].sort());
    // No temp files left beside the outputs (atomic writes).
    expect(readdirNames(outDir).filter((f) => f.endsWith('.tmp'))).toEqual([]);
  });

  it('refuses an existing sidecar before any work and leaves it as it was; --overwrite replaces it', async () => {
    const input = path.join(tmp, 'c.tif');
    await writeImage(input, { data: noisyScene([96, 96], 9, 3), shape: [96, 96], sampleType: 'float32' });
    const outDir = path.join(tmp, 'out-existing');
    const [output] = await denoiseFiles({ modelDir, inputs: [input], outDir });
    const sidecar = noiseSidecarPath(output);
    rmSync(output); // the output is gone, its sidecar is still there
    writeFileSync(sidecar, '{"mine": true}\n');
    const err = await denoiseFiles({ modelDir, inputs: [input], outDir }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OutputError);
    expect((err as OutputError).file).toBe(sidecar);
    expect(readFileSync(sidecar, 'utf8')).toBe('{"mine": true}\n');
    expect(readdirNames(outDir)).toEqual([path.basename(sidecar)]); // nothing written, not even the output
    await denoiseFiles({ modelDir, inputs: [input], outDir, overwrite: true });
    const replaced = JSON.parse(readFileSync(sidecar, 'utf8')) as InputNoiseRecord;
    expect(Math.abs(replaced.sigma / 9 - 1)).toBeLessThan(0.05);
  });

  it('noise: false writes no sidecar', async () => {
    const input = path.join(tmp, 'd.tif');
    await writeImage(input, { data: noisyScene([64, 64], 5, 4), shape: [64, 64], sampleType: 'float32' });
    const outDir = path.join(tmp, 'out-off');
    const [output] = await denoiseFiles({ modelDir, inputs: [input], outDir, noise: false });
    expect(readdirNames(outDir)).toEqual([path.basename(output)]);
  });
});

describe('fitChunkedInputNoise', () => {
  it('fits from a seeded sample of chunks only (edge chunks cropped), sigma within 5%, the same chunks for the same seed', async () => {
    const shape = [300, 260];
    const sigma = 7;
    const reader = new MemoryArrayReader(noisyScene(shape, sigma, 5), shape, [128, 128]);
    const fit = await fitChunkedInputNoise(reader, { sampleBlocks: 3, seed: 11 });
    expect(fit.chunks).toHaveLength(3);
    expect(new Set(fit.chunks.map((c) => c.join('.'))).size).toBe(3);
    expect([...reader.reads.keys()].sort()).toEqual(fit.chunks.map((c) => c.join('.')).sort()); // nothing else read
    expect(Math.abs(fit.nlf.sigma / sigma - 1), `sigma ${fit.nlf.sigma}`).toBeLessThan(0.05);
    expect(fit.nlf.warnings.join(' ')).not.toMatch(/clipped|NaN/); // no padding got in
    const again = await fitChunkedInputNoise(new MemoryArrayReader(noisyScene(shape, sigma, 5), shape, [128, 128]), { sampleBlocks: 3, seed: 11 });
    expect(again.chunks).toEqual(fit.chunks);
    expect(again.nlf.sigma).toBe(fit.nlf.sigma);
  });

  it('3D chunks are fitted slice by slice; asking for more chunks than exist reads each once', async () => {
    const shape = [4, 150, 150];
    const reader = new MemoryArrayReader(noisyScene(shape, 12, 6), shape, [2, 150, 150]);
    const fit = await fitChunkedInputNoise(reader, { sampleBlocks: 10, seed: 2 });
    expect(fit.chunks).toEqual([
      [0, 0, 0],
      [1, 0, 0],
    ]);
    expect([...reader.reads.values()]).toEqual([1, 1]);
    expect(Math.abs(fit.nlf.sigma / 12 - 1), `sigma ${fit.nlf.sigma}`).toBeLessThan(0.05);
  });
});

function readdirNames(dir: string): string[] {
  return readdirSync(dir).sort();
}
