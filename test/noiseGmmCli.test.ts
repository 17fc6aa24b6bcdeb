/** `blindspot noise --calibrate ... --model gmm` and `--bootstrap`: files written, usage errors. */
import { promises as fs, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { initBackend } from '../backend/select.js';
import { OutputError, UsageError } from '../core/errors.js';
import { Rng } from '../core/rng.js';
import { addGaussianNoise, syntheticCells } from '../core/synthetic.js';
import { writeImage } from '../storage/index.js';
import { runNoise } from '../cli/noise.js';
import { gmmVariance } from '../noise/gmm.js';
import { loadNoiseModel, noiseSpecOf, noiseVarianceFunction } from '../noise/model.js';
import { loadModelFolder } from '../models/io.js';
import { denoiseVolume } from '../pipeline/denoise.js';
import { trainModel } from '../pipeline/train.js';

let tmp: string;
let stackFile: string;
const A = 0.8;
const B = 25;

beforeAll(async () => {
  await initBackend({ backend: 'wasm' });
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'noise-gmm-cli-'));
  const [N, Y, X] = [30, 32, 32];
  const rng = new Rng(6);
  const stack = new Float32Array(N * Y * X);
  for (let f = 0; f < N; f++)
    for (let p = 0; p < Y * X; p++) {
      const s = 20 + 600 * (p / (Y * X));
      stack[f * Y * X + p] = s + Math.sqrt(A * s + B) * rng.normal();
    }
  stackFile = path.join(tmp, 'stack.npy');
  await writeImage(stackFile, { data: stack, shape: [N, Y, X], sampleType: 'float32' });
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

async function quiet<T>(run: () => Promise<T>): Promise<T> {
  vi.spyOn(process.stdout, 'write').mockImplementation(() => true);
  vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
  try {
    return await run();
  } finally {
    vi.restoreAllMocks();
  }
}

describe('blindspot noise: GMM models', () => {
  it('--calibrate --model gmm writes a GMM model whose Poisson-Gaussian summary train --prior reads', async () => {
    const out = path.join(tmp, 'gmm.json');
    expect(await quiet(() => runNoise(['--calibrate', stackFile, '--out', out, '--model', 'gmm', '--gmm-components', '2', '--gmm-degree', '1', '--json']))).toBe(0);
    const model = await loadNoiseModel(out);
    expect(model.kind).toBe('gmm');
    if (model.kind !== 'gmm') return;
    expect([model.components, model.degree, model.signalFrom]).toEqual([2, 1, 'frame-mean']);
    for (const s of [100, 300, 500]) expect(Math.abs(gmmVariance(model, s) / (A * s + B) - 1), `variance at ${s}`).toBeLessThan(0.1);
    expect(noiseSpecOf(model).kind).toBe('poisson-gaussian');
    // The default stays the histogram model.
    const histogram = path.join(tmp, 'histogram.json');
    expect(await quiet(() => runNoise(['--calibrate', stackFile, '--out', histogram, '--json']))).toBe(0);
    expect(JSON.parse(readFileSync(histogram, 'utf8')).kind).toBe('calibrated');
  });

  it('rejects bad options with usage errors', async () => {
    const out = path.join(tmp, 'x.json');
    const cases: [string[], RegExp][] = [
      [['--calibrate', stackFile, '--out', out, '--model', 'gauss'], /--model must be one of histogram, gmm/],
      [['--calibrate', stackFile, '--out', out, '--gmm-components', '3'], /need --model gmm/],
      [['--calibrate', stackFile, '--out', out, '--model', 'gmm', '--gmm-components', '0'], /--gmm-components must be from 1 to 16/],
      [['--calibrate', stackFile, '--out', out, '--model', 'gmm', '--gmm-degree', '9'], /--gmm-degree must be from 0 to 6/],
      [['--calibrate', stackFile, '--out', out, '--model', 'gmm', '--gmm-degree', 'two'], /--gmm-degree must be a non-negative integer/],
      [['--calibrate', stackFile, '--model', 'gmm'], /--calibrate needs --out/],
      [['--calibrate', stackFile, '--bootstrap', 'model', '--out', out], /do not go together/],
      [['--bootstrap', 'model', '--out', out], /--bootstrap needs <model-dir> and the noisy images/],
      [['--bootstrap', 'model', stackFile], /--bootstrap needs --out/],
      [[stackFile, '--model', 'gmm'], /--model applies only to --calibrate or --bootstrap/],
      [[stackFile, '--out', out], /--out applies only to --calibrate or --bootstrap/],
    ];
    for (const [args, message] of cases) {
      const error = await runNoise(args).then(
        () => null,
        (err: unknown) => err,
      );
      expect(error, args.join(' ')).toBeInstanceOf(UsageError);
      expect((error as Error).message, args.join(' ')).toMatch(message);
    }
    await expect(runNoise(['--calibrate', stackFile, '--out', stackFile, '--model', 'gmm'])).rejects.toThrow(OutputError);
  });

  it('--bootstrap denoises with a trained model and fits a GMM or histograms to (denoised, noisy) pairs', async () => {
    // A tiny image and a model trained for a few steps: the point is the path (model folder ->
    // in-memory predictor -> pairs -> GMM file), not the denoiser's quality. The glorot initialisation
    // keeps the 10-step model the one measured below (with PyTorch's, it ends more biased: 3.9x).
    const rng = new Rng(3);
    const sigma = 12;
    const cells = syntheticCells([1, 64, 64], rng, { blobs: 60, filaments: 4 });
    const clean = cells.data.map((v) => 50 + 150 * v);
    const noisy = { data: addGaussianNoise(clean, sigma, rng), shape: [64, 64] as const, sampleType: 'float32' as const };
    const image = path.join(tmp, 'noisy.tif');
    await writeImage(image, noisy);
    const modelDir = path.join(tmp, 'model');
    await trainModel({ volumes: [{ volume: noisy, name: 'noisy' }], out: modelDir, steps: 10, batchSize: 8, patchShape: [32, 32], network: { depth: 2, filters: 8, kernelSize: 3, batchNorm: true, init: 'glorot' }, learningRate: 4e-3, validateEvery: 10, seed: 3, noiseFits: false });
    const out = path.join(tmp, 'bootstrap.json');
    expect(await quiet(() => runNoise(['--bootstrap', modelDir, image, '--out', out, '--backend', 'wasm', '--gmm-components', '2', '--json']))).toBe(0);
    const model = await loadNoiseModel(out);
    expect(model.kind).toBe('gmm');
    if (model.kind !== 'gmm') return;
    expect(model.signalFrom).toBe('denoised');
    expect(model.source).toBe(image);
    // The model describes the residuals of that denoiser: its variance, averaged over the pixels'
    // denoised values, is of the order of their mean square. Only of the order: a 10-step model is a
    // poor, biased denoiser (residual means of -35 at bright pixels, measured), and the mixture, whose
    // mean is the signal by construction, spreads that bias into variance (+45% measured). The noise
    // level itself is checked with a good denoiser in noiseGmm.test.ts.
    const { model: network, manifest } = await loadModelFolder(modelDir);
    const denoised = await denoiseVolume(network, manifest, noisy);
    network.dispose();
    let residual = 0;
    let predicted = 0;
    for (let i = 0; i < noisy.data.length; i++) {
      residual += (noisy.data[i] - denoised.data[i]) ** 2 / noisy.data.length;
      predicted += gmmVariance(model, denoised.data[i]) / noisy.data.length;
    }
    expect(predicted / residual, `model ${predicted} residuals ${residual}`).toBeGreaterThan(0.8);
    expect(predicted / residual, `model ${predicted} residuals ${residual}`).toBeLessThan(1.8);
    expect(Math.sqrt(residual)).toBeGreaterThan(sigma * 0.8);
    const histogramOut = path.join(tmp, 'bootstrap-histogram.json');
    expect(await quiet(() => runNoise(['--bootstrap', modelDir, image, '--out', histogramOut, '--model', 'histogram', '--backend', 'wasm']))).toBe(0);
    const histogram = await loadNoiseModel(histogramOut);
    expect(histogram.kind === 'calibrated' && histogram.signalFrom).toBe('denoised');
    // No mixture here to turn bias into variance: the bins hold the residuals' mean squares.
    const variance = noiseVarianceFunction(histogram);
    let binned = 0;
    for (const d of denoised.data) binned += variance(d) / denoised.data.length;
    expect(Math.abs(binned / residual - 1), `histogram ${binned} residuals ${residual}`).toBeLessThan(0.1);
  });
});
