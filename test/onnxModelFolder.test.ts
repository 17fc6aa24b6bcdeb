/**
 * model.onnx in a model folder (models/onnx/export.ts): an old folder without it still loads and is
 * exported in memory without a byte of the folder changing; writeOnnxToModelFolder adds the file and
 * the manifest's record; a file that does not match the record is not used.
 */
import { promises as fs } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadModelFolder, MODEL_ONNX, readManifest } from '../models/io.js';
import { onnxForModelFolder, sha256Hex, writeOnnxToModelFolder } from '../models/onnx/export.js';
import { Rng } from '../core/rng.js';
import { addGaussianNoise, syntheticCells } from '../core/synthetic.js';
import { denoisingTileModel } from '../models/bayes.js';
import { normalise } from '../models/normalise.js';
import { trainModel } from '../pipeline/train.js';
import { saveUntrainedModel } from './fixtures/untrainedModel.js';
import { errorOverRange, randomInput, runOnnx } from './fixtures/onnxModels.js';

let tmp: string;
beforeAll(async () => {
  await tf.setBackend('cpu');
  tmp = await fs.mkdtemp(path.join(tmpdir(), 'blindspot-onnx-folder-'));
});
afterAll(async () => fs.rm(tmp, { recursive: true, force: true }));

/** Every file of a folder with its bytes, to show nothing changed. */
async function snapshot(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const name of (await fs.readdir(dir)).sort()) out[name] = sha256Hex(new Uint8Array(await fs.readFile(path.join(dir, name))));
  return out;
}

describe('model.onnx in a model folder', () => {
  it('an old folder (no model.onnx) is exported in memory and left untouched; export adds file and record', async () => {
    const dir = path.join(tmp, 'old');
    await saveUntrainedModel(dir, { dims: 2, depth: 1, filters: 4, kernelSize: 3, batchNorm: true, variant: 'n2v' }, { mode: 'meanstd', offset: 10, scale: 3 }, 5);
    const before = await snapshot(dir);
    expect(Object.keys(before)).not.toContain(MODEL_ONNX);
    expect((await readManifest(dir)).onnx).toBeUndefined();

    const inMemory = await onnxForModelFolder(dir);
    expect(inMemory.source).toBe('exported');
    expect(await snapshot(dir)).toEqual(before);

    const written = await writeOnnxToModelFolder(dir);
    const manifest = await readManifest(dir);
    expect(manifest.onnx).toEqual({ file: MODEL_ONNX, inputs: written.info.inputs, outputs: written.info.outputs, opset: written.info.opset, sha256: written.info.sha256 });
    const bytes = new Uint8Array(await fs.readFile(path.join(dir, MODEL_ONNX)));
    expect(sha256Hex(bytes)).toBe(manifest.onnx!.sha256);
    // Same weights, same exporter: the same bytes as the in-memory export.
    expect(manifest.onnx!.sha256).toBe(inMemory.info.sha256);

    const fromFile = await onnxForModelFolder(dir);
    expect(fromFile.source).toBe('file');
    expect(fromFile.bytes).toEqual(bytes);

    // The tfjs side still loads, and the file predicts what it does.
    const { model } = await loadModelFolder(dir);
    const shape = [1, 8, 10, 1];
    const x = randomInput(shape, 3);
    const reference = tf.tidy(() => (model.predict(tf.tensor(x, shape)) as tf.Tensor).dataSync() as Float32Array);
    model.dispose();
    const onnx = await runOnnx(fromFile.bytes, x, shape);
    expect(errorOverRange(onnx.output.data, reference)).toBeLessThan(1e-4);
  });

  it('a model.onnx that does not match the manifest is not used (exported again, with a warning), and not rewritten', async () => {
    const dir = path.join(tmp, 'tampered');
    await saveUntrainedModel(dir, { dims: 3, depth: 1, filters: 2, kernelSize: 3, batchNorm: false, variant: 'n2v' }, { mode: 'meanstd', offset: 0, scale: 1 }, 6);
    await writeOnnxToModelFolder(dir);
    const file = path.join(dir, MODEL_ONNX);
    const bytes = new Uint8Array(await fs.readFile(file));
    bytes[bytes.length - 1] ^= 0xff;
    await fs.writeFile(file, bytes);
    const before = await snapshot(dir);
    const result = await onnxForModelFolder(dir);
    expect(result.source).toBe('exported');
    expect(result.info.warnings.join('\n')).toMatch(/does not match the sha256/);
    expect(result.info.sha256).toBe((await readManifest(dir)).onnx!.sha256);
    expect(await snapshot(dir)).toEqual(before);
  });

  it('train writes model.onnx at the end: a learned-noise laine19 whose graph gives the posterior mean tfjs gives', async () => {
    const rng = new Rng(4);
    const cells = syntheticCells([1, 48, 48], rng);
    const noisy = { data: addGaussianNoise(cells.data.map((v) => 40 + 100 * v), 12, rng), shape: [48, 48] as const, sampleType: 'float32' as const };
    const out = path.join(tmp, 'trained');
    const warnings: string[] = [];
    const manifest = await trainModel({
      volumes: [{ volume: noisy, name: 'synthetic' }],
      out,
      method: 'laine19',
      prior: 'learned',
      steps: 2,
      batchSize: 2,
      patchShape: [16, 16],
      network: { depth: 1, filters: 4 },
      validateEvery: 2,
      seed: 1,
      noiseFits: false,
      onEvent: (e) => {
        if (e.type === 'warning') warnings.push(e.message);
      },
    });
    expect(warnings).toEqual([]);
    expect(manifest.prior?.source).toBe('learned');
    expect(manifest.onnx?.outputs.map((o) => o.role)).toEqual(['denoised', 'uncertainty', 'prior-mean']);
    expect(await readManifest(out)).toEqual(manifest);
    const onnx = await onnxForModelFolder(out);
    expect(onnx.source).toBe('file');

    const { model } = await loadModelFolder(out);
    const shape = [1, 48, 48, 1];
    const x = normalise(noisy.data, manifest.normalisation);
    const tileModel = denoisingTileModel(model, manifest);
    const reference = tf.tidy(() => {
      const input = tf.tensor(x, shape);
      return (typeof tileModel === 'function' ? tileModel(input) : (tileModel.predict(input) as tf.Tensor)).dataSync() as Float32Array;
    });
    model.dispose();
    const result = await runOnnx(onnx.bytes, x, shape, ['output']);
    expect(errorOverRange(result.output.data, reference)).toBeLessThan(1e-4);
  });
});
