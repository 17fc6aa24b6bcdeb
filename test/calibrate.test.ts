import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { promises as fs, existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { InputError, OutputError, UsageError } from '../core/errors.js';
import { psnr } from '../core/metrics.js';
import { Rng } from '../core/rng.js';
import { addGaussianNoise, syntheticCells } from '../core/synthetic.js';
import { PACKAGE_ROOT } from '../core/version.js';
import type { Shape, Volume } from '../core/volume.js';
import { gridMaskPatch } from '../models/gridMask.js';
import {
  applyClassicalDenoiser,
  calibrateDenoiser,
  classicalDenoiserAt,
  defaultCandidates,
  estimateNoiseSigma,
  jInvariantLoss,
  MAX_WIDENINGS,
  type ClassicalDenoiser,
} from '../pipeline/calibrate.js';
import { readImage, writeImage } from '../storage/index.js';
import { calibrationTable, runCalibrate } from '../cli/calibrate.js';

/** Allowed PSNR shortfall of the self-supervised choice against the clean-image oracle. */
const MARGIN_DB = 0.3;
const DENOISERS: ClassicalDenoiser[] = ['median', 'gaussian', 'nlm'];

/** Synthetic cells scaled to [0, 200] plus N(0, sigma^2): the clean image is known. */
function syntheticPair(shape: Shape, sigma: number, seed: number): { clean: Volume; noisy: Volume } {
  const rng = new Rng(seed);
  const cells = syntheticCells(shape.length === 3 ? shape : [1, shape[0], shape[1]], rng, { blobs: shape.length === 3 ? 60 : 80, filaments: 6 });
  const clean: Volume = { data: cells.data.map((v) => v * 200), shape, sampleType: 'float32' };
  return { clean, noisy: { data: addGaussianNoise(clean.data, sigma, rng), shape, sampleType: 'float32' } };
}

/** Oracle (clean-image PSNR) against the J-invariant choice, for the output the loss certifies. */
function compareWithOracle(clean: Volume, noisy: Volume, denoiser: ClassicalDenoiser, range: number) {
  const result = calibrateDenoiser(noisy, { denoiser });
  const psnrs = result.losses.map(({ parameter }) => psnr(clean.data, applyClassicalDenoiser(noisy, denoiser, parameter).data, range));
  const oracleIndex = psnrs.indexOf(Math.max(...psnrs));
  const lossArgmin = result.losses.findIndex((l) => l.parameter === result.best);
  return { result, psnrs, oracleIndex, lossArgmin, chosenPsnr: psnrs[lossArgmin], oraclePsnr: psnrs[oracleIndex] };
}

describe('J-invariant masking', () => {
  it('the identity map has a non-zero J-invariant loss, near the donut-interpolation error', () => {
    const { noisy } = syntheticPair([48, 48], 15, 3);
    const identity = (input: Float32Array, _shape: Shape, indices: Int32Array): Float32Array => Float32Array.from(indices, (i) => input[i]);
    const { loss, output } = jInvariantLoss(noisy, identity, 4);
    // Without masking the identity would score exactly 0; masked it reads the donut means.
    expect(loss).toBeGreaterThan(15 * 15);
    const phase0 = gridMaskPatch(noisy.data, noisy.shape, 4, 0);
    expect(output[0]).toBeCloseTo(phase0.input[0], 4);
    expect(output[0]).not.toBe(noisy.data[0]);
  });

  it.each(DENOISERS)('%s: the output on a pixel does not depend on that pixel (2D and 3D)', (denoiser) => {
    for (const shape of [[32, 32], [6, 16, 16]] as Shape[]) {
      const { noisy } = syntheticPair(shape, 15, 4);
      const parameter = denoiser === 'median' ? 2 : denoiser === 'gaussian' ? 1.5 : 20;
      const grid = shape.length === 3 ? 3 : 4;
      const before = jInvariantLoss(noisy, classicalDenoiserAt(denoiser, parameter), grid).output;
      const probe = shape.length === 3 ? (3 * 16 + 7) * 16 + 9 : 13 * 32 + 10;
      const changed = Float32Array.from(noisy.data);
      changed[probe] += 1000;
      const after = jInvariantLoss({ ...noisy, data: changed }, classicalDenoiserAt(denoiser, parameter), grid).output;
      expect(after[probe]).toBe(before[probe]);
      // ... while its neighbours' outputs do see it (the filter is not trivially constant).
      expect(after[probe + 1]).not.toBe(before[probe + 1]);
    }
  });

  it('the J-invariant loss equals the clean-image error plus the noise variance (within 5%)', () => {
    const sigma = 20;
    const { clean, noisy } = syntheticPair([96, 96], sigma, 5);
    for (const denoiser of ['median', 'gaussian'] as const) {
      const { loss, output } = jInvariantLoss(noisy, classicalDenoiserAt(denoiser, 1), 4);
      let mse = 0;
      for (let i = 0; i < output.length; i++) mse += (output[i] - clean.data[i]) ** 2;
      mse /= output.length;
      expect(Math.abs(loss - (mse + sigma * sigma)) / (mse + sigma * sigma)).toBeLessThan(0.05);
    }
  });

  it('estimates the noise sigma of white noise within 10%', () => {
    const { noisy } = syntheticPair([128, 128], 20, 6);
    expect(estimateNoiseSigma(noisy)).toBeGreaterThan(18);
    expect(estimateNoiseSigma(noisy)).toBeLessThan(22);
  });
});

describe('calibration against the oracle (synthetic images, sigma 20)', () => {
  it.each(DENOISERS)(`%s 2D: choice within ${MARGIN_DB} dB of the oracle, loss minimum at or next to the oracle's`, (denoiser) => {
    for (const seed of [1, 2]) {
      const { clean, noisy } = syntheticPair([112, 112], 20, seed);
      const c = compareWithOracle(clean, noisy, denoiser, 200);
      expect(c.chosenPsnr).toBeGreaterThan(c.oraclePsnr - MARGIN_DB);
      expect(Math.abs(c.lossArgmin - c.oracleIndex)).toBeLessThanOrEqual(1);
      // Denoising helps at all: well above the noisy image.
      expect(c.chosenPsnr).toBeGreaterThan(psnr(clean.data, noisy.data, 200) + 3);
    }
  });

  it.each(['median', 'gaussian'] as const)(`%s 3D: choice within ${MARGIN_DB} dB of the oracle`, (denoiser) => {
    const { clean, noisy } = syntheticPair([10, 40, 40], 20, 7);
    const c = compareWithOracle(clean, noisy, denoiser, 200);
    expect(c.result.phases).toBe(27);
    expect(c.chosenPsnr).toBeGreaterThan(c.oraclePsnr - MARGIN_DB);
    expect(Math.abs(c.lossArgmin - c.oracleIndex)).toBeLessThanOrEqual(1);
  });

  it('nlm 3D runs and beats the noisy image', () => {
    const { clean, noisy } = syntheticPair([6, 32, 32], 20, 8);
    const result = calibrateDenoiser(noisy, { denoiser: 'nlm', candidates: [10, 20, 30] });
    expect(result.nlm).toEqual({ patchRadius: 1, searchRadius: 2 });
    const out = applyClassicalDenoiser(noisy, 'nlm', result.best);
    expect(psnr(clean.data, out.data, 200)).toBeGreaterThan(psnr(clean.data, noisy.data, 200) + 3);
  });

  it('the plain filter with the chosen parameter is a different image from the J-invariant one', () => {
    const { clean, noisy } = syntheticPair([64, 64], 20, 9);
    const plain = applyClassicalDenoiser(noisy, 'gaussian', 1, { output: 'plain' });
    const invariant = applyClassicalDenoiser(noisy, 'gaussian', 1);
    expect(psnr(plain.data, invariant.data, 200)).toBeLessThan(60);
    expect(psnr(clean.data, plain.data, 200)).toBeGreaterThan(psnr(clean.data, noisy.data, 200));
  });

  it('a 512x512 image calibrates the median in seconds', () => {
    const { noisy } = syntheticPair([512, 512], 20, 10);
    const result = calibrateDenoiser(noisy, { denoiser: 'median', candidates: [1, 2] });
    expect(result.seconds).toBeLessThan(20);
    expect(result.losses).toHaveLength(2);
  });
});

describe('blindspot calibrate (CLI)', () => {
  let tmp: string;
  let image: string;
  beforeAll(async () => {
    tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'blindspot-calibrate-'));
    const { noisy } = syntheticPair([48, 48], 20, 11);
    image = path.join(tmp, 'noisy.tif');
    await writeImage(image, noisy);
  });
  afterAll(async () => {
    await fs.rm(tmp, { recursive: true, force: true });
  });

  async function capture(args: string[]): Promise<{ code: number; stdout: string }> {
    const chunks: string[] = [];
    const spy = vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => {
      chunks.push(String(chunk));
      return true;
    });
    try {
      const code = await runCalibrate(args);
      return { code, stdout: chunks.join('') };
    } finally {
      spy.mockRestore();
    }
  }

  it('prints the loss per candidate and the choice, and writes the denoised image', async () => {
    const out = path.join(tmp, 'denoised.tif');
    const { code, stdout } = await capture([image, '--denoiser', 'gaussian', '--candidates', '0.5,1,2', '--out', out]);
    expect(code).toBe(0);
    expect(stdout).toMatch(/chosen sigma = (0\.5|1|2)/);
    expect(stdout.match(/^\s+(0\.5|1|2)\s+\d/gm)).toHaveLength(3);
    const written = await readImage(out);
    expect(written.shape).toEqual([48, 48]);
    const again = await capture([image, '--denoiser', 'gaussian', '--candidates', '0.5,1,2', '--json']);
    const event = JSON.parse(again.stdout.trim().split('\n').pop()!) as { type: string; best: number; losses: Array<{ parameter: number; loss: number }> };
    expect(event.type).toBe('calibration');
    expect(event.losses.map((l) => l.parameter)).toEqual([0.5, 1, 2]);
    expect(event.best).toBe(event.losses.reduce((a, b) => (b.loss < a.loss ? b : a)).parameter);
  });

  it('refuses to write over the input, a missing file, a bad image and bad options', async () => {
    await expect(runCalibrate([image, '--denoiser', 'median', '--out', image])).rejects.toThrow(OutputError);
    const missing = path.join(tmp, 'missing.tif');
    await expect(runCalibrate([missing, '--denoiser', 'median'])).rejects.toThrow(new InputError(missing, 'does not exist').message);
    const withNan = path.join(tmp, 'nan.tif');
    const data = new Float32Array(64).fill(1);
    data[5] = NaN;
    await writeImage(withNan, { data, shape: [8, 8], sampleType: 'float32' });
    const err = await runCalibrate([withNan, '--denoiser', 'median']).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InputError);
    expect((err as InputError).file).toBe(withNan);
    await expect(runCalibrate([image, '--denoiser', 'bilateral'])).rejects.toThrow(UsageError);
    await expect(runCalibrate([image, '--denoiser', 'median', '--candidates', '1.5'])).rejects.toThrow(UsageError);
    await expect(runCalibrate([image])).rejects.toThrow(UsageError);
  });

  it('calibrateDenoiser names the image in its input errors', () => {
    const tiny: Volume = { data: new Float32Array(9), shape: [3, 3], sampleType: 'float32' };
    expect(() => calibrateDenoiser(tiny, { denoiser: 'median', name: 'tiny.tif' })).toThrow(/^tiny\.tif: /);
    expect(() => calibrateDenoiser(tiny, { denoiser: 'median', name: 'tiny.tif' })).toThrow(InputError);
  });
});

const SHARED = path.resolve(PACKAGE_ROOT, '../shared');
const BSD_IMAGE = path.join(SHARED, 'data', 'BSD68', 'test003.png');
const haveShared = existsSync(BSD_IMAGE);
if (!haveShared) console.warn(`calibrate.test: skipping the BSD68 test, ${BSD_IMAGE} is absent (shared data not mounted)`);

describe.skipIf(!haveShared)('real data: BSD68 test003, sigma 25', () => {
  it.each(['median', 'gaussian'] as const)(`%s: J-invariant choice within ${MARGIN_DB} dB of the oracle`, async (denoiser) => {
    const clean = await readImage(BSD_IMAGE);
    const noisy: Volume = { data: addGaussianNoise(clean.data, 25, new Rng(25)), shape: clean.shape, sampleType: 'float32' };
    const c = compareWithOracle(clean, noisy, denoiser, 255);
    expect(c.chosenPsnr).toBeGreaterThan(c.oraclePsnr - MARGIN_DB);
    expect(Math.abs(c.lossArgmin - c.oracleIndex)).toBeLessThanOrEqual(1);
    expect(c.chosenPsnr).toBeGreaterThan(psnr(clean.data, noisy.data, 255) + 1);
  });
});

describe('the default search widens until the optimum is interior', () => {
  it('correlated noise: the minimum at the end of the default range is searched past, and the choice is interior', () => {
    // Noise correlated over 3x3 pixels pulls the J-invariant optimum of the Gaussian down to the
    // smallest default sigma; the search must look below it before calling the choice.
    const { clean } = syntheticPair([96, 96], 20, 11);
    const rng = new Rng(5);
    const [ny, nx] = clean.shape as [number, number];
    const white = Float32Array.from({ length: ny * nx }, () => rng.normal() * 30);
    const noisy = new Float32Array(white.length);
    for (let y = 0; y < ny; y++) {
      for (let x = 0; x < nx; x++) {
        let sum = 0;
        for (let dy = -1; dy <= 1; dy++) for (let dx = -1; dx <= 1; dx++) sum += white[Math.min(ny - 1, Math.max(0, y + dy)) * nx + Math.min(nx - 1, Math.max(0, x + dx))];
        noisy[y * nx + x] = clean.data[y * nx + x] + sum / 3;
      }
    }
    const result = calibrateDenoiser({ data: noisy, shape: clean.shape, sampleType: 'float32' }, { denoiser: 'gaussian' });
    const defaults = defaultCandidates('gaussian', result.noiseSigmaEstimate);
    const parameters = result.losses.map((l) => l.parameter);
    expect(Math.min(...parameters)).toBeLessThan(Math.min(...defaults));
    expect(result.edge).toBeUndefined();
    expect(result.best).toBeGreaterThan(Math.min(...parameters));
    expect(result.best).toBeLessThan(Math.max(...parameters));
  });

  it('pure noise on a flat image: the range grows MAX_WIDENINGS times, and a choice still at the end is flagged', () => {
    const rng = new Rng(6);
    const flat: Volume = { data: Float32Array.from({ length: 48 * 48 }, () => 100 + 10 * rng.normal()), shape: [48, 48], sampleType: 'float32' };
    const result = calibrateDenoiser(flat, { denoiser: 'gaussian' });
    const defaults = defaultCandidates('gaussian', result.noiseSigmaEstimate);
    expect(result.losses).toHaveLength(defaults.length + MAX_WIDENINGS);
    expect(result.best).toBeGreaterThan(Math.max(...defaults) * 1.5 ** (MAX_WIDENINGS - 1));
    expect(result.edge).toBe('upper');
    expect(calibrationTable('flat.tif', result)).toMatch(/warning: the chosen sigma is the largest one searched/);
  });

  it('explicit candidates are not widened; a choice at their end is flagged', () => {
    const { noisy } = syntheticPair([64, 64], 20, 12);
    const result = calibrateDenoiser(noisy, { denoiser: 'gaussian', candidates: [0.1, 0.2] });
    expect(result.losses.map((l) => l.parameter)).toEqual([0.1, 0.2]);
    expect(result.edge).toBe('upper');
    const interior = calibrateDenoiser(noisy, { denoiser: 'median' });
    expect(interior.edge).toBeUndefined();
  });
});
