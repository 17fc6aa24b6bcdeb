/**
 * BSD68 at Gaussian sigma=25, the N2V paper's protocol: train on Train400 with noise added as float
 * (seeded, not clipped), evaluate on BSD68, mean PSNR with peak 255 (per image, then averaged).
 *
 *   npm run bench:bsd68 -- --steps 2000 [--method n2v2] [--batch-size 16] [--threads 2] [--tta] [--limit 68]
 *     [--prior gaussian:25]   Gaussian-prior training; reports the posterior mean and the prior mean
 *     [--recipe default|reference] [--widths halving|level] [--init glorot|torch] [--bn-eps F] [--adam-eps F]
 *     [--val-fraction F] [--lr-schedule plateau|constant]   reference: train as the PyTorch reference N2V
 *       does (bench/referenceRecipe.ts, docs/parity.md); a flag overrides one factor
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { initBackend, type BackendChoice } from '../backend/select.js';
import { Rng } from '../core/rng.js';
import { psnr, ssim } from '../core/metrics.js';
import { SHARED_DIR } from '../core/version.js';
import { addGaussianNoise } from '../core/synthetic.js';
import type { Volume } from '../core/volume.js';
import { loadModelFolder } from '../models/io.js';
import { parseNoiseSpec } from '../models/bayes.js';
import { trainModel, type NamedVolume } from '../pipeline/train.js';
import { denoiseVolume } from '../pipeline/denoise.js';
import { expandInputs, readImage } from '../storage/index.js';
import { createReporter } from '../cli/progress.js';
import { benchArgs, writeResult, runBenchmark } from './common.js';
import { benchRecipe } from './referenceRecipe.js';

const SIGMA = 25;

async function main(): Promise<void> {
  const args = benchArgs(process.argv.slice(2));
  const steps = Number(args.get('steps') ?? 2000);
  const batchSize = Number(args.get('batch-size') ?? 16);
  const method = (args.get('method') ?? 'n2v') as 'n2v' | 'n2v2';
  const limit = Number(args.get('limit') ?? 68);
  const tta = args.get('tta') === 'true';
  const prior = args.has('prior') ? parseNoiseSpec(String(args.get('prior'))) : undefined;
  const threads = args.has('threads') ? Number(args.get('threads')) : undefined;
  const recipeName = args.get('recipe') ?? 'default';
  const recipe = benchRecipe(recipeName, args);
  const trainDir = path.join(SHARED_DIR, 'data', 'Train400');
  const testDir = path.join(SHARED_DIR, 'data', 'BSD68');
  try {
    await fs.access(trainDir);
    await fs.access(testDir);
  } catch {
    console.error(`bench:bsd68 needs ${trainDir} and ${testDir} (the shared benchmark data); they are absent here.`);
    process.exit(2);
  }
  const backend = await initBackend({ backend: (args.get('backend') ?? 'auto') as BackendChoice, threads });
  const reporter = createReporter({ json: !process.stderr.isTTY });
  reporter.log(`backend ${backend.name}, ${backend.threads} thread(s); ${method}, ${steps} steps, batch ${batchSize}`);

  const noiseRng = new Rng(25);
  const noisyVolume = (v: Volume): Volume => ({ data: addGaussianNoise(v.data, SIGMA, noiseRng), shape: v.shape, sampleType: 'float32' });
  const trainFiles = await expandInputs([trainDir]);
  const training: NamedVolume[] = [];
  for (const f of trainFiles) training.push({ volume: noisyVolume(await readImage(f)), name: f });

  const modelDir = await fs.mkdtemp(path.join(os.tmpdir(), 'blindspot-bsd68-'));
  const t0 = performance.now();
  const manifest = await trainModel({
    volumes: training,
    out: modelDir,
    method,
    steps,
    batchSize,
    prior,
    patchShape: [64, 64],
    network: recipe.network,
    ...recipe.train,
    seed: 1,
    backend,
    onEvent: (e) => reporter.train(e),
    command: ['bench:bsd68'],
  });
  reporter.finish();
  const trainSeconds = (performance.now() - t0) / 1000;

  const { model } = await loadModelFolder(modelDir);
  const testFiles = (await expandInputs([testDir])).slice(0, limit);
  const perImage: Array<{ file: string; psnrNoisy: number; psnr: number; ssim: number; psnrPriorMean?: number }> = [];
  const testRng = new Rng(68);
  const t1 = performance.now();
  for (const f of testFiles) {
    const clean = await readImage(f);
    const noisy: Volume = { data: addGaussianNoise(clean.data, SIGMA, testRng), shape: clean.shape, sampleType: 'float32' };
    const denoised = await denoiseVolume(model, manifest, noisy, { tta });
    perImage.push({
      file: path.basename(f),
      psnrNoisy: psnr(clean.data, noisy.data, 255),
      psnr: psnr(clean.data, denoised.data, 255),
      ssim: ssim(clean.data, denoised.data, clean.shape, 255),
      ...(prior ? { psnrPriorMean: psnr(clean.data, (await denoiseVolume(model, manifest, noisy, { tta, output: 'prior-mean' })).data, 255) } : {}),
    });
    reporter.event('image', perImage[perImage.length - 1]);
  }
  const inferSeconds = (performance.now() - t1) / 1000;
  model.dispose();
  const mean = (k: 'psnr' | 'psnrNoisy' | 'ssim' | 'psnrPriorMean'): number => perImage.reduce((a, r) => a + (r[k] ?? NaN), 0) / perImage.length;
  const result = {
    backend: backend.name,
    threads: backend.threads,
    method,
    steps,
    batchSize,
    recipe: recipeName,
    ...(Object.keys(recipe.network).length + Object.keys(recipe.train).length > 0 ? { switches: { ...recipe.network, ...recipe.train } } : {}),
    tta,
    images: perImage.length,
    meanPsnrNoisy: +mean('psnrNoisy').toFixed(3),
    meanPsnr: +mean('psnr').toFixed(3),
    meanSsim: +mean('ssim').toFixed(4),
    ...(prior ? { prior, meanPsnrPriorMean: +mean('psnrPriorMean').toFixed(3) } : {}),
    bestStep: manifest.training.bestStep,
    trainSeconds: +trainSeconds.toFixed(1),
    inferSeconds: +inferSeconds.toFixed(1),
    wallSeconds: +((performance.now() - t0) / 1000).toFixed(1),
    anchors: { n2vPaper: 27.71, n2vReproduction: 27.81, bm3d: 28.57 },
    perImage,
  };
  const file = await writeResult(prior ? 'bsd68-prior' : 'bsd68', result);
  await fs.rm(modelDir, { recursive: true, force: true });
  console.log(`BSD68 sigma=25 (${perImage.length} images): noisy ${result.meanPsnrNoisy} dB -> ${method} ${result.meanPsnr} dB (SSIM ${result.meanSsim}); train ${result.trainSeconds} s; written ${file}`);
  console.log(JSON.stringify({ meanPsnr: result.meanPsnr, meanPsnrNoisy: result.meanPsnrNoisy, steps, trainSeconds: result.trainSeconds }));
}

runBenchmark(main);
