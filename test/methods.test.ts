/**
 * Every training method (models/methods.ts) end to end on tiny problems, on the wasm backend:
 * trains, raises PSNR over the noisy input by a stated margin, is saved in its model folder and
 * denoised from it (pipeline/denoise.ts, and the streaming denoiseUrl for the architectural
 * blind-spot networks, 2D and 3D); bad method inputs are refused with the file named.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../backend/select.js';
import { InputError, UsageError } from '../core/errors.js';
import { psnr } from '../core/metrics.js';
import { Rng } from '../core/rng.js';
import { addGaussianNoise, syntheticCells } from '../core/synthetic.js';
import type { Shape, Volume } from '../core/volume.js';
import { loadModelFolder, readManifest, type MethodName, type ModelManifest } from '../models/io.js';
import { buildNetwork, defaultNetwork, networkGeometry, type NetworkConfig } from '../models/network.js';
import { estimateBytesPerVoxel, maxTileVoxelsFor, TILE_OVERRUN_FACTOR } from '../pipeline/predict.js';
import { planTileGrid } from '../operators/tileGrid.js';
import { getMethod } from '../methods/registry.js';
import * as tf from '@tensorflow/tfjs-core';
import { buildUNet, CentredMaxBlurPool, unetGeometry, type UNetConfig } from '../models/unet.js';
import { MaxBlurPool, NearestUpSampling } from '../models/layers.js';
import { saveUntrainedModel } from './fixtures/untrainedModel.js';
import { MemoryArrayReader } from './fixtures/stream-arrays.js';
import { denoiseFiles, denoiseVolume } from '../pipeline/denoise.js';
import { denoiseUrl, parseByteSize } from '../pipeline/streamDenoise.js';
import { minBatchSizeForBatchNorm, trainModel, TrainingInterrupted, type NamedVolume, type TrainOptions } from '../pipeline/train.js';
import { readImage, writeImage } from '../storage/index.js';
import { createOmeZarr } from '../storage/ome.js';
import { openChunkedSource } from '../storage/open.js';

let tmp: string;
beforeAll(async () => {
  await initBackend({ backend: 'wasm' });
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'blindspot-methods-'));
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

/** Blobs and filaments scaled to [5, 100], Gaussian noise sigma 20: about 14 dB noisy. */
function problem(shape: Shape, seed: number, sigma = 20): { clean: Float32Array; noisy: Volume; second: Volume } {
  const rng = new Rng(seed);
  const shape3 = (shape.length === 2 ? [1, ...shape] : shape) as [number, number, number];
  const cells = syntheticCells(shape3, rng, { blobs: Math.round((shape3[1] * shape3[2]) / 50), filaments: 4 });
  const clean = cells.data.map((v) => v * 100);
  return {
    clean,
    noisy: { data: addGaussianNoise(clean, sigma, rng), shape, sampleType: 'float32' },
    second: { data: addGaussianNoise(clean, sigma, rng), shape, sampleType: 'float32' },
  };
}

const range = 100;

async function train(method: MethodName, volumes: NamedVolume[], out: string, extra: Partial<TrainOptions> = {}): Promise<{ manifest: ModelManifest; seconds: number }> {
  const t0 = performance.now();
  const manifest = await trainModel({
    volumes,
    out,
    method,
    steps: 40,
    batchSize: 4,
    patchShape: volumes[0].volume.shape.length === 2 ? [32, 32] : [8, 16, 16],
    learningRate: 4e-3,
    validateEvery: 20,
    valPatches: 4,
    seed: 5,
    noiseFits: false,
    ...extra,
  });
  return { manifest, seconds: (performance.now() - t0) / 1000 };
}

async function denoisedPsnr(out: string, noisy: Volume, clean: Float32Array): Promise<number> {
  const { model, manifest } = await loadModelFolder(out);
  try {
    const denoised = await denoiseVolume(model, manifest, noisy);
    return psnr(clean, denoised.data, range);
  } finally {
    model.dispose();
  }
}

// No batch norm: 40 steps are too few for its moving statistics to settle, and inference uses them.
const tinyUNet = { depth: 1, filters: 8, batchNorm: false };

/** PSNR gain (dB) each method must reach over the noisy input after 40 steps of batch 4 (32x32 patches). */
const cases2D: { method: MethodName; minGain: number; extra?: Partial<TrainOptions>; paired?: 'noisy' | 'clean' }[] = [
  { method: 'n2v', minGain: 3, extra: { network: tinyUNet, maskFraction: 0.05 } },
  { method: 'n2v2', minGain: 3, extra: { network: tinyUNet, maskFraction: 0.05 } },
  { method: 'structn2v', minGain: 3, extra: { network: tinyUNet, maskFraction: 0.05, structMask: 'horizontal:3' } },
  { method: 'noise2self', minGain: 3, extra: { network: tinyUNet } },
  { method: 'noise2info', minGain: 3, extra: { network: tinyUNet } },
  // 8 filters barely train in 40 steps (loss 1.37 -> 1.26, +2 dB); 16 reach +8 dB.
  { method: 'dbsn', minGain: 3, extra: { network: { filters: 16, blocks: 2 }, noiseFits: true } },
  { method: 'neighbor2neighbor', minGain: 3, extra: { network: tinyUNet } },
  { method: 'n2n', minGain: 4, extra: { network: tinyUNet }, paired: 'noisy' },
  { method: 'care', minGain: 5, extra: { network: tinyUNet }, paired: 'clean' },
];

describe('every method trains a tiny 2D problem and denoises from its saved folder', () => {
  const { clean, noisy, second } = problem([64, 64], 1);
  const noisyPsnr = psnr(clean, noisy.data, range);
  for (const c of cases2D) {
    it(`${c.method}: PSNR gain > ${c.minGain} dB`, async () => {
      const out = path.join(tmp, `2d-${c.method}`);
      const target: Volume | undefined = c.paired === 'clean' ? { data: clean, shape: noisy.shape, sampleType: 'float32' } : c.paired === 'noisy' ? second : undefined;
      const { manifest, seconds } = await train(c.method, [{ volume: noisy, name: 'noisy', ...(target ? { target, targetName: 'target' } : {}) }], out, c.extra);
      const denoised = await denoisedPsnr(out, noisy, clean);
      console.log(`${c.method} 2D: noisy ${noisyPsnr.toFixed(2)} dB -> ${denoised.toFixed(2)} dB, ${seconds.toFixed(1)} s for 40 steps`);
      expect(manifest.method).toBe(c.method);
      const saved = await readManifest(out);
      expect(saved.method).toBe(c.method);
      expect(saved.network.kind ?? 'unet').toBe(c.method === 'laine19' ? 'laine19' : c.method === 'dbsn' ? 'dbsn' : 'unet');
      // Only the stratified-masking methods record masking options.
      expect(saved.masking !== undefined).toBe(['n2v', 'n2v2', 'structn2v'].includes(c.method));
      // Only neighbor2neighbor validates by a loss other than its training loss.
      expect(saved.training.validationLoss).toBe(c.method === 'neighbor2neighbor' ? 'j-invariant' : undefined);
      expect(denoised - noisyPsnr).toBeGreaterThan(c.minGain);
      if (c.method === 'n2v2') expect(saved.network.kind !== 'laine19' && saved.network.kind !== 'dbsn' && saved.network.variant).toBe('n2v2');
      if (c.method === 'structn2v') expect(saved.methodSettings?.structMask?.shape).toEqual([1, 3]);
      if (c.method === 'noise2self') expect(saved.methodSettings?.grid).toBe(4);
      if (c.method === 'noise2info') {
        // Algorithm 2: sigma starts at 1 and only goes down; recorded at every validation.
        const estimates = saved.methodSettings!.noise2info!.estimates;
        expect(estimates).toHaveLength(2);
        const sigmas = estimates.map((e) => e.sigma);
        expect(sigmas.every((s, i) => s <= (i === 0 ? 1 : sigmas[i - 1]))).toBe(true);
        expect(saved.history.filter((h) => h.noise2infoSigma !== undefined).map((h) => h.noise2infoSigma)).toEqual(sigmas);
      }
      if (c.method === 'dbsn') {
        // The noise model of its loss came from the training image's noise-level fit: var ~ sigma^2 = 400.
        expect(saved.loss).toBe('dbsn-nll');
        expect(saved.prior?.source).toBe('nlf');
        const noise = saved.prior!.noise;
        expect(noise.kind).toBe('poisson-gaussian');
        if (noise.kind === 'poisson-gaussian') expect(Math.sqrt(noise.a * 50 + noise.b)).toBeGreaterThan(14);
      }
      if (c.paired) expect(saved.methodSettings?.targets).toEqual(['target']);
    });
  }
});

/** Writes a volume as a one-chunk OME-Zarr for denoiseUrl. */
async function writeZarr(url: string, volume: Volume): Promise<void> {
  const axes = (volume.shape.length === 3 ? ['z', 'y', 'x'] : ['y', 'x']).map((name) => ({ name, type: 'space' as const, unit: 'micrometer' }));
  const writer = await createOmeZarr(url, {
    shape: [...volume.shape],
    chunks: [...volume.shape],
    dtype: 'float32',
    axes,
    placement: { scale: volume.shape.map(() => 1), translation: volume.shape.map(() => 0) },
  });
  await writer.writeChunk(
    volume.shape.map(() => 0),
    volume.data,
  );
}

async function readZarr(url: string): Promise<Float32Array> {
  const reader = await openChunkedSource(url);
  try {
    return await reader.readChunk(reader.info.shape.map(() => 0));
  } finally {
    await reader.close?.();
  }
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  let d = 0;
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i] - b[i]));
  return d;
}

describe('architectural blind-spot models denoise from their folder, in memory, from files and streamed', () => {
  const roundTrip = async (label: string, out: string, noisy: Volume, clean: Float32Array, minGain: number): Promise<void> => {
    const { model, manifest } = await loadModelFolder(out);
    const inMemory = await denoiseVolume(model, manifest, noisy);
    model.dispose();
    const input = path.join(tmp, `${label}-noisy.tif`);
    await writeImage(input, noisy);
    const [written] = await denoiseFiles({ modelDir: out, inputs: [input], outDir: path.join(tmp, `${label}-denoised`) });
    const fromFile = await readImage(written);
    const zarrIn = path.join(tmp, `${label}-noisy.zarr`);
    await writeZarr(zarrIn, noisy);
    const zarrOut = path.join(tmp, `${label}-denoised.zarr`);
    const { sizeMultiple } = networkGeometry(manifest.network);
    const chunks = noisy.shape.map((s) => Math.ceil(s / sizeMultiple) * sizeMultiple);
    await denoiseUrl({ input: zarrIn, out: zarrOut, modelDir: out, maxMemoryBytes: parseByteSize('2GiB'), outputChunks: chunks });
    const streamed = (await readZarr(zarrOut)).subarray(0, noisy.data.length);
    const scale = inMemory.data.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
    expect(maxAbsDiff(fromFile.data, inMemory.data) / scale).toBeLessThan(1e-4);
    expect(maxAbsDiff(streamed, inMemory.data) / scale).toBeLessThan(1e-3);
    const gain = psnr(clean, streamed, range) - psnr(clean, noisy.data, range);
    console.log(`${label}: streamed denoise gains ${gain.toFixed(2)} dB`);
    expect(gain).toBeGreaterThan(minGain);
  };

  it('2D laine19 with a learned noise level: a Gaussian prior whose sigma is recorded in input units, posterior mean', async () => {
    const { clean, noisy } = problem([64, 64], 2);
    const out = path.join(tmp, 'rt-laine19-2d');
    const { manifest, seconds } = await train('laine19', [{ volume: noisy, name: 'noisy' }], out, { network: { depth: 1, filters: 8 }, prior: 'learned' });
    expect(manifest.method).toBe('laine19');
    expect(manifest.loss).toBe('prior-nll');
    expect(manifest.prior?.source).toBe('learned');
    // A prior model's output is not offset-corrected: its posterior brings the pixel back in.
    expect(manifest.outputOffsetRemoved).toBeUndefined();
    expect(manifest.network.kind === 'laine19' && manifest.network.outputChannels).toBe(2);
    const sigma = manifest.prior!.noise.kind === 'gaussian' ? manifest.prior!.noise.sigma : NaN;
    console.log(`laine19 2D: ${seconds.toFixed(1)} s for 40 steps, learned sigma ${sigma.toFixed(2)} (true 20)`);
    // Near the true level in input units: it starts at the validation patches' noise estimate
    // (the start before, half the data's std, ended at 15.2).
    expect(Math.abs(sigma - 20)).toBeLessThan(3);
    await roundTrip('laine19-2d', out, noisy, clean, 3);
  });

  it('3D dbsn with a known Gaussian noise: posterior mean, in memory, from a file and streamed', async () => {
    const { clean, noisy } = problem([16, 32, 32], 3);
    const out = path.join(tmp, 'rt-dbsn-3d');
    const { manifest, seconds } = await train('dbsn', [{ volume: noisy, name: 'noisy' }], out, {
      network: { filters: 16, blocks: 1 },
      prior: { kind: 'gaussian', sigma: 20 },
      // 3D dilated convolutions are the slowest kernels here (about 1 s per step of 4 patches on a loaded 2-core machine).
      steps: 24,
      batchSize: 2,
      validateEvery: 12,
    });
    console.log(`dbsn 3D: ${seconds.toFixed(1)} s for 24 steps`);
    expect(manifest.network).toMatchObject({ kind: 'dbsn', dims: 3, outputChannels: 2 });
    expect(manifest.prior).toEqual({ noise: { kind: 'gaussian', sigma: 20 }, source: 'given' });
    await roundTrip('dbsn-3d', out, noisy, clean, 2);
  });

  it('3D n2v2 (blur-pool U-Net without top skip) trains and denoises', async () => {
    const { clean, noisy } = problem([16, 32, 32], 4);
    const out = path.join(tmp, '3d-n2v2');
    const { manifest, seconds } = await train('n2v2', [{ volume: noisy, name: 'noisy' }], out, { network: tinyUNet, maskFraction: 0.05 });
    expect(manifest.network).toMatchObject({ dims: 3, variant: 'n2v2' });
    const gain = (await denoisedPsnr(out, noisy, clean)) - psnr(clean, noisy.data, range);
    console.log(`n2v2 3D: gain ${gain.toFixed(2)} dB, ${seconds.toFixed(1)} s for 40 steps`);
    expect(gain).toBeGreaterThan(2);
  });

  it('3D neighbor2neighbor: one edge-adjacent pair per 2x2 cell of every slice, and it trains and denoises', async () => {
    const { clean, noisy } = problem([16, 32, 32], 6);
    const shape: Shape = [2, 4, 6];
    const prepared = getMethod('neighbor2neighbor').preparePatch({ step: 0, shape, data: new Float32Array(48), rng: new Rng(9) }, undefined as never);
    for (let z = 0; z < 2; z++) {
      for (let y = 0; y < 4; y += 2) {
        for (let x = 0; x < 6; x += 2) {
          const cell = [0, 1, 2, 3].map((k) => prepared.mask[z * 24 + (y + (k >> 1)) * 6 + x + (k & 1)]);
          expect(cell.filter((c) => c === 1)).toHaveLength(1);
          expect(cell.filter((c) => c === 2)).toHaveLength(1);
          // Edge-adjacent: the two positions differ in one coordinate (never the diagonal 0-3 or 1-2).
          expect(cell.indexOf(1) + cell.indexOf(2)).not.toBe(3);
        }
      }
    }
    expect(() => getMethod('neighbor2neighbor').preparePatch({ step: 0, shape: [5, 6], data: new Float32Array(30), rng: new Rng(1) }, undefined as never)).toThrow(UsageError);
    const out = path.join(tmp, '3d-neighbor2neighbor');
    const { seconds } = await train('neighbor2neighbor', [{ volume: noisy, name: 'noisy' }], out, { network: tinyUNet });
    const gain = (await denoisedPsnr(out, noisy, clean)) - psnr(clean, noisy.data, range);
    console.log(`neighbor2neighbor 3D: gain ${gain.toFixed(2)} dB, ${seconds.toFixed(1)} s for 40 steps`);
    expect(gain).toBeGreaterThan(2);
  });
});

describe('output offset removed after training', () => {
  it('n2v2 and n2n: the mean offset on the validation patches leaves the output bias; the denoised mean matches the input mean', async () => {
    const mean = (a: Float32Array): number => a.reduce((sum, v) => sum + v, 0) / a.length;
    for (const method of ['n2v2', 'n2n'] as const) {
      const { noisy, second } = problem([64, 64], 6);
      const out = path.join(tmp, `offset-${method}`);
      const volume = method === 'n2n' ? { volume: noisy, name: 'noisy', target: second, targetName: 'second' } : { volume: noisy, name: 'noisy' };
      const { manifest } = await train(method, [volume], out, { network: tinyUNet, ...(method === 'n2v2' ? { maskFraction: 0.05 } : {}) });
      const removed = manifest.outputOffsetRemoved!;
      expect(Number.isFinite(removed)).toBe(true);
      const { model } = await loadModelFolder(out);
      const residual = mean((await denoiseVolume(model, manifest, noisy)).data) - mean(noisy.data);
      model.dispose();
      console.log(`${method}: offset removed ${removed.toFixed(2)}, denoised - noisy mean after ${residual.toFixed(2)} (range 100, sigma 20)`);
      // The validation slab is a quarter of the image: its offset stands for the whole image's, up to
      // the noise of a mean over its 1024 pixels (sigma 20 / 32 = 0.63; 1.01 measured for n2v2).
      expect(Math.abs(residual)).toBeLessThan(1.5);
      expect(Math.abs(residual)).toBeLessThan(Math.abs(removed));
    }
  });
});

describe('streamed training (chunked sources) with the new methods', () => {
  it('noise2self and laine19 train from a chunked reader; dbsn without a given noise model is refused (no fits)', async () => {
    const { clean, noisy } = problem([96, 64], 9);
    const noisyPsnr = psnr(clean, noisy.data, range);
    for (const [method, network] of [
      ['noise2self', tinyUNet],
      ['laine19', { depth: 1, filters: 8 }],
    ] as const) {
      const out = path.join(tmp, `stream-${method}`);
      const manifest = await trainModel({
        sources: [{ reader: new MemoryArrayReader(noisy.data, noisy.shape, [32, 32]), name: 'memory' }],
        out,
        method,
        network,
        steps: 20,
        batchSize: 4,
        patchShape: [32, 32],
        learningRate: 4e-3,
        validateEvery: 10,
        valPatches: 4,
        seed: 2,
      });
      expect(manifest.method).toBe(method);
      expect(manifest.history.filter((h) => h.valLoss !== undefined)).toHaveLength(2);
      const gain = (await denoisedPsnr(out, noisy, clean)) - noisyPsnr;
      console.log(`${method} streamed: gain ${gain.toFixed(2)} dB`);
      expect(gain).toBeGreaterThan(2);
    }
    await expect(
      trainModel({ sources: [{ reader: new MemoryArrayReader(noisy.data, noisy.shape, [32, 32]), name: 'memory' }], out: path.join(tmp, 'stream-dbsn'), method: 'dbsn', steps: 1 }),
    ).rejects.toThrow(/--method dbsn uses the noise-level fits[^]*--prior gaussian/);
  });
});

describe('resume keeps the state a method carries between steps', () => {
  const { noisy } = problem([64, 64], 8);
  for (const [method, extra] of [
    ['noise2info', { network: tinyUNet }],
    ['n2v', { network: tinyUNet, maskFraction: 0.05, prior: 'learned' }],
  ] as const) {
    it(`${method}${'prior' in extra ? ' with a learned noise level' : ''}: interrupted and resumed equals uninterrupted`, async () => {
      const volumes = [{ volume: noisy, name: 'noisy' }];
      const settings = { ...extra, steps: 16, validateEvery: 8 };
      const straight = await train(method, volumes, path.join(tmp, `resume-${method}-a`), settings);
      const out = path.join(tmp, `resume-${method}-b`);
      const controller = new AbortController();
      await expect(
        train(method, volumes, out, { ...settings, signal: controller.signal, onEvent: (e) => e.type === 'step' && e.step === 11 && controller.abort() }),
      ).rejects.toBeInstanceOf(TrainingInterrupted);
      const resumed = await train(method, volumes, out, { ...settings, resume: true });
      expect(resumed.manifest.history.map((h) => h.step)).toEqual(straight.manifest.history.map((h) => h.step));
      resumed.manifest.history.forEach((h, i) => expect(h.loss).toBeCloseTo(straight.manifest.history[i].loss, 4));
      if (method === 'noise2info') {
        expect(resumed.manifest.methodSettings?.noise2info?.estimates).toHaveLength(2);
        expect(resumed.manifest.methodSettings!.noise2info!.sigma).toBeCloseTo(straight.manifest.methodSettings!.noise2info!.sigma, 4);
      } else {
        const sigmaOf = (m: ModelManifest): number => (m.prior?.noise.kind === 'gaussian' ? m.prior.noise.sigma : NaN);
        expect(sigmaOf(resumed.manifest)).toBeCloseTo(sigmaOf(straight.manifest), 3);
      }
    });
  }
});

describe('tile memory of the blind-spot networks', () => {
  it('counts every call of a shared layer: laine19 (4 rotated branches) needs several times the U-Net per voxel', () => {
    const sizes = (['unet', 'laine19', 'dbsn'] as const).map((kind) => {
      const cfg = defaultNetwork(kind, 2, 'small');
      const model = buildNetwork(cfg, 1);
      const bytes = estimateBytesPerVoxel(model, 2, networkGeometry(cfg).sizeMultiple);
      model.dispose();
      return bytes;
    });
    const [unet, laine19, dbsn] = sizes;
    // Measured 2984, 12446 and 7176 B; the fallback for unmeasurable models is 4096.
    expect(laine19).toBeGreaterThan(3 * unet);
    expect(dbsn).toBeGreaterThan(2 * unet);
  });

  it('the small 3D laine19 default (depth 1) has exact tiles within the budget prediction accepts; depth 2 does not', () => {
    const smallestTile = (depth: number): { tileVoxels: number; limit: number } => {
      const cfg = { ...defaultNetwork('laine19', 3, 'small'), depth } as NetworkConfig;
      const model = buildNetwork(cfg, 1);
      const geometry = networkGeometry(cfg);
      const maxTileVoxels = maxTileVoxelsFor(model, 3, geometry.sizeMultiple);
      model.dispose();
      const plan = planTileGrid([256, 256, 256], { sizeMultiple: geometry.sizeMultiple, receptiveRadius: geometry.receptiveRadius, maxTileVoxels });
      return { tileVoxels: plan.tileVoxels, limit: TILE_OVERRUN_FACTOR * maxTileVoxels };
    };
    expect((defaultNetwork('laine19', 3, 'small') as { depth: number }).depth).toBe(1);
    // Measured: depth 1 needs 38^3 voxels against a 4 x 72k limit; depth 2 needs 84^3.
    const one = smallestTile(1);
    expect(one.tileVoxels).toBeLessThanOrEqual(one.limit);
    const two = smallestTile(2);
    expect(two.tileVoxels).toBeGreaterThan(two.limit);
  });
});

describe('n2v2 max-blur-pool alignment', () => {
  /**
   * Where an input impulse at x = p ends up after pooling and nearest upsampling (the centre of mass
   * of the response along x): the position the decoder sees the pooled feature at.
   */
  function pooledImpulseCentre(pool: 'centred' | 'trailing', p: number, width: number): number {
    return tf.tidy(() => {
      const values = new Float32Array(4 * width);
      for (let y = 0; y < 4; y++) values[y * width + p] = 1;
      const x = tf.tensor(values, [1, 4, width, 1]);
      const layer = pool === 'centred' ? new CentredMaxBlurPool({ dims: 2 }) : new MaxBlurPool({ dims: 2 });
      const up = new NearestUpSampling({ dims: 2 }).apply(layer.apply(x) as tf.Tensor) as tf.Tensor;
      const row = tf.slice(up, [0, 1, 0, 0], [1, 1, width, 1]).dataSync();
      let mass = 0;
      let moment = 0;
      row.forEach((v, i) => {
        mass += v;
        moment += v * i;
      });
      return moment / mass;
    });
  }

  it("the centred pool keeps an impulse where it was (both phases); n2v's Keras ('trailing') pool moves it one pixel", () => {
    for (const p of [6, 7]) {
      expect(pooledImpulseCentre('centred', p, 16)).toBeCloseTo(p, 5);
      expect(pooledImpulseCentre('trailing', p, 16)).toBeCloseTo(p - 1, 5);
    }
  });

  it('centred values: out[j] = (m[2j-1] + 2 m[2j] + m[2j+1]) / 4 of the pairwise maxima m, zero before the start', () => {
    const rng = new Rng(31);
    const width = 8;
    const line = Float32Array.from({ length: width }, () => rng.uniform());
    const got = tf.tidy(() => (new CentredMaxBlurPool({ dims: 2 }).apply(tf.tile(tf.tensor(line, [1, 1, width, 1]), [1, 2, 1, 1])) as tf.Tensor).dataSync());
    const m = (i: number): number => (i < 0 ? 0 : Math.max(line[i], line[Math.min(i + 1, width - 1)]));
    // Constant along y (two equal rows): the y blur of the pair gives (0 + 2 + 1) / 4 of the row at output row 0.
    for (let j = 0; j < width / 2; j++) expect(got[j]).toBeCloseTo((0.75 * (m(2 * j - 1) + 2 * m(2 * j) + m(2 * j + 1))) / 4, 5);
  });

  it('new n2v2 models record the centred pool; its traced field bounds the measured one; old configs keep the trailing pool', async () => {
    const cfg: UNetConfig = { dims: 2, depth: 2, filters: 2, kernelSize: 3, batchNorm: false, variant: 'n2v2', blurPool: 'centred' };
    const geometry = unetGeometry(cfg);
    const trailing = unetGeometry({ ...cfg, blurPool: undefined });
    // The trailing window reaches further after the pixel, the centred one is symmetric about the pair.
    expect(geometry.receptiveAfter).toBeLessThan(trailing.receptiveAfter);
    const model = buildUNet(cfg, 4);
    expect(model.layers.filter((l) => l instanceof CentredMaxBlurPool)).toHaveLength(2);
    const size = 48;
    const p = 24;
    const gradient = tf.tidy(() => {
      for (const layer of model.layers) if (layer.getWeights().length > 0) layer.setWeights(layer.getWeights().map((w) => tf.add(tf.abs(w), 0.05)));
      const rng = new Rng(8);
      const x = tf.tensor(Float32Array.from({ length: size * size }, () => 0.1 + rng.uniform()), [1, size, size, 1]);
      const selector = tf.buffer([1, size, size, 1]);
      selector.set(1, 0, p, p, 0);
      return tf.grad((input: tf.Tensor) => tf.sum(tf.mul(model.apply(input) as tf.Tensor, selector.toTensor())))(x).dataSync();
    });
    let before = 0;
    let after = 0;
    gradient.forEach((g, i) => {
      if (g === 0) return;
      const dx = (i % size) - p;
      before = Math.max(before, -dx);
      after = Math.max(after, dx);
    });
    expect(before).toBeGreaterThan(0);
    expect(before).toBeLessThanOrEqual(geometry.receptiveBefore);
    expect(after).toBeLessThanOrEqual(geometry.receptiveAfter);
    model.dispose();
    const old = buildUNet({ ...cfg, blurPool: undefined }, 4);
    expect(old.layers.filter((l) => l instanceof MaxBlurPool)).toHaveLength(2);
    old.dispose();
    const { manifest } = await train('n2v2', [{ volume: problem([40, 40], 3).noisy, name: 'noisy' }], path.join(tmp, 'n2v2-pool'), {
      network: tinyUNet,
      steps: 2,
      validateEvery: 2,
    });
    expect(manifest.network).toMatchObject({ variant: 'n2v2', blurPool: 'centred' });
    expect(manifest.masking).toMatchObject({ strategy: 'median' });
  });
});

describe('manifests written before the network union', () => {
  it('a network without `kind` is a U-Net: same geometry, it builds, and its folder still denoises', async () => {
    const cfg: UNetConfig = { dims: 2, depth: 2, filters: 4, kernelSize: 3, batchNorm: false, variant: 'n2v2' };
    expect(networkGeometry(cfg)).toEqual(unetGeometry(cfg));
    expect(networkGeometry({ ...cfg, kind: 'unet' })).toEqual(unetGeometry(cfg));
    const a = buildNetwork(cfg, 3);
    expect(a.name).toContain('unet2d_n2v2');
    a.dispose();
    const dir = path.join(tmp, 'old-model');
    await saveUntrainedModel(dir, cfg, { mode: 'meanstd', offset: 0, scale: 1 }, 3);
    expect((await readManifest(dir)).network).not.toHaveProperty('kind');
    const { noisy } = problem([24, 20], 7);
    const input = path.join(tmp, 'old-model-input.tif');
    await writeImage(input, noisy);
    const [written] = await denoiseFiles({ modelDir: dir, inputs: [input], outDir: path.join(tmp, 'old-model-out') });
    expect((await readImage(written)).shape).toEqual([24, 20]);
  });
});

describe('U-Net batch norm follows the batch size unless asked', () => {
  it(`is off below batch ${minBatchSizeForBatchNorm}, on from it, and --batch-norm / --no-batch-norm win either way`, async () => {
    const volumes = [{ volume: problem([32, 32], 3).noisy, name: 'noisy' }];
    const bn = async (out: string, batchSize: number, batchNorm?: boolean): Promise<boolean | undefined> => {
      const { manifest } = await train('n2v', volumes, path.join(tmp, out), { steps: 1, batchSize, patchShape: [16, 16], network: { depth: 1, filters: 4, ...(batchNorm === undefined ? {} : { batchNorm }) } });
      const { model } = await loadModelFolder(path.join(tmp, out));
      const layers = model.layers.some((l) => l.getClassName().includes('BatchNorm'));
      model.dispose();
      // The manifest describes the network that was built.
      expect((manifest.network as { batchNorm?: boolean }).batchNorm).toBe(layers);
      return layers;
    };
    expect(await bn('bn-small', minBatchSizeForBatchNorm - 1)).toBe(false);
    expect(await bn('bn-large', minBatchSizeForBatchNorm)).toBe(true);
    expect(await bn('bn-forced-on', 2, true)).toBe(true);
    expect(await bn('bn-forced-off', minBatchSizeForBatchNorm, false)).toBe(false);
  });
});

describe('bad method inputs are refused with the file named', () => {
  const { noisy } = problem([32, 32], 6);

  it('--mask-fraction / --strategy / --mask-radius / --loss are refused where no stratified masking happens (grid, architectural, paired)', async () => {
    const volumes = [{ volume: problem([32, 32], 2).noisy, name: 'noisy' }];
    await expect(train('noise2self', volumes, path.join(tmp, 'refused-grid'), { maskFraction: 0.05 })).rejects.toThrow(/grid phase/);
    await expect(train('laine19', volumes, path.join(tmp, 'refused-arch'), { strategy: 'median' })).rejects.toThrow(/masks nothing/);
    await expect(train('noise2info', volumes, path.join(tmp, 'refused-radius'), { maskRadius: 5 })).rejects.toThrow(/--mask-radius/);
    await expect(train('n2v2', volumes, path.join(tmp, 'refused-radius-0'), { maskRadius: 0 })).rejects.toThrow(/--mask-radius must be an integer >= 1, got 0/);
    // Its loss squares by definition: a --loss mae it ignored would be a silent lie.
    await expect(train('noise2info', volumes, path.join(tmp, 'refused-loss'), { loss: 'mae' })).rejects.toThrow(/--loss does not apply to --method noise2info: its loss is L_in/);
    await expect(fs.access(path.join(tmp, 'refused-grid'))).rejects.toThrow();
  });

  it('n2n --targets: a count mismatch names the unpaired file, a shape mismatch the target', async () => {
    const a = path.join(tmp, 'pair-a.tif');
    const b = path.join(tmp, 'pair-b.tif');
    const small = path.join(tmp, 'pair-small.tif');
    await writeImage(a, noisy);
    await writeImage(b, noisy);
    await writeImage(small, { data: noisy.data.slice(0, 32 * 16), shape: [32, 16], sampleType: 'float32' });
    const base = { out: path.join(tmp, 'bad'), method: 'n2n' as const, steps: 1, noiseFits: false };
    const countError = await trainModel({ ...base, inputs: [a, b], targets: [a] }).catch((e: unknown) => e);
    expect(countError).toBeInstanceOf(InputError);
    expect((countError as InputError).file).toBe(b);
    const shapeError = await trainModel({ ...base, inputs: [a], targets: [small] }).catch((e: unknown) => e);
    expect(shapeError).toBeInstanceOf(InputError);
    expect((shapeError as InputError).file).toBe(small);
    const missing = path.join(tmp, 'no-such-target.tif');
    const missingError = await trainModel({ ...base, inputs: [a], targets: [missing] }).catch((e: unknown) => e);
    expect(missingError).toBeInstanceOf(InputError);
    expect((missingError as InputError).message).toContain(missing);
    await expect(trainModel({ ...base, inputs: [a] })).rejects.toThrow(UsageError);
    await expect(trainModel({ ...base, method: 'n2v', inputs: [a], targets: [b] })).rejects.toThrow(/--targets applies to/);
  });

  it('structn2v --struct-mask: bad files and specs name the file or the option', async () => {
    const volumes = [{ volume: noisy, name: 'noisy' }];
    const base = { volumes, out: path.join(tmp, 'bad-struct'), method: 'structn2v' as const, steps: 1, noiseFits: false };
    const even = path.join(tmp, 'even.json');
    await fs.writeFile(even, JSON.stringify([[1, 1]]));
    const evenError = await trainModel({ ...base, structMask: even }).catch((e: unknown) => e);
    expect(evenError).toBeInstanceOf(InputError);
    expect((evenError as InputError).file).toBe(even);
    const absent = path.join(tmp, 'absent.npy');
    const absentError = await trainModel({ ...base, structMask: absent }).catch((e: unknown) => e);
    expect(absentError).toBeInstanceOf(InputError);
    expect((absentError as InputError).file).toBe(absent);
    await expect(trainModel({ ...base, structMask: 'horizontal:4' })).rejects.toThrow(UsageError);
    await expect(trainModel({ ...base, structMask: undefined })).rejects.toThrow(/needs --struct-mask/);
    await expect(trainModel({ ...base, method: 'n2v', structMask: 'horizontal:3' })).rejects.toThrow(/--struct-mask applies to/);
  });
});
