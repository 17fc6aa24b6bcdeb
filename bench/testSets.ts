/**
 * The test sets of the 2D benchmarks (bench:methods, bench:distill): BSD68 / Set12 images with
 * seeded Gaussian noise (sigma 25, as float, not clipped: the N2V paper's protocol), and their
 * scores (PSNR with peak 255 per image then averaged, SSIM, image-wide offset), and a model folder
 * denoising them on the engine `blindspot denoise` would choose.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { SHARED_DIR } from '../core/version.js';
import { Rng } from '../core/rng.js';
import { psnr, ssim } from '../core/metrics.js';
import { addGaussianNoise } from '../core/synthetic.js';
import type { Volume } from '../core/volume.js';
import { ENGINE_CHOICES, type EngineChoice } from '../engines/engine.js';
import { openModelEngine } from '../engines/modelEngine.js';
import type { SamplingOptions } from '../methods/method.js';
import { loadModelFolder, type ModelManifest } from '../models/io.js';
import { denoiseVolume } from '../pipeline/denoise.js';
import { expandInputs, readImage } from '../storage/index.js';

/**
 * The shared benchmark data (Train400 for training, BSD68 and Set12 for testing); exits with status 2
 * and says what is missing when ../shared is absent.
 */
export async function benchmarkDataDirs(bench: string): Promise<{ trainDir: string; bsdDir: string; set12Dir: string }> {
  const dirs = { trainDir: path.join(SHARED_DIR, 'data', 'Train400'), bsdDir: path.join(SHARED_DIR, 'data', 'BSD68'), set12Dir: path.join(SHARED_DIR, 'data', 'Set12') };
  try {
    for (const d of Object.values(dirs)) await fs.access(d);
  } catch {
    console.error(`${bench} needs ${dirs.trainDir}, ${dirs.bsdDir} and ${dirs.set12Dir} (the shared benchmark data); they are absent here.`);
    process.exit(2);
  }
  return dirs;
}

export const SIGMA = 25;

export interface TestImage {
  name: string;
  clean: Volume;
  noisy: Volume;
  range: number;
}

export interface Score {
  psnr: number;
  ssim: number;
  images: number;
  /** Mean of output - clean over each image, averaged (grey levels): an image-wide offset. */
  offset: number;
  /** PSNR with each image's own mean offset removed: what the offset costs. */
  psnrWithoutOffset: number;
}

/** The first `limit` images of `dir` (sorted), each with its own seeded noise draw (the same for every run with `seed`). */
export async function loadTestSet(dir: string, limit: number, seed: number): Promise<TestImage[]> {
  const files = (await expandInputs([dir])).slice(0, limit);
  const rng = new Rng(seed);
  const out: TestImage[] = [];
  for (const f of files) {
    const clean = await readImage(f);
    out.push({ name: path.basename(f), clean, noisy: { data: addGaussianNoise(clean.data, SIGMA, rng), shape: clean.shape, sampleType: 'float32' }, range: 255 });
  }
  return out;
}

export function score(images: readonly TestImage[], outputs: readonly Volume[]): Score {
  let p = 0;
  let s = 0;
  let o = 0;
  let q = 0;
  images.forEach((img, i) => {
    const clean = img.clean.data;
    const out = outputs[i].data;
    p += psnr(clean, out, img.range);
    s += ssim(clean, out, img.clean.shape, img.range);
    let offset = 0;
    for (let j = 0; j < clean.length; j++) offset += out[j] - clean[j];
    offset /= clean.length;
    o += offset;
    q += psnr(clean, out.map((v) => v - offset), img.range);
  });
  const n = images.length;
  return { psnr: +(p / n).toFixed(3), ssim: +(s / n).toFixed(4), images: n, offset: +(o / n).toFixed(2), psnrWithoutOffset: +(q / n).toFixed(3) };
}

/** The benchmarks' `--engine` (default auto), refused when it names no engine. */
export function benchEngine(value: string | undefined): EngineChoice {
  const choice = (value ?? 'auto') as EngineChoice;
  if (!ENGINE_CHOICES.includes(choice)) throw new Error(`--engine must be one of ${ENGINE_CHOICES.join(', ')}, got '${value}'`);
  return choice;
}

export interface TestSetResult<K extends string> {
  scores: Record<K, Score>;
  /** Wall seconds per set, and the pixels it holds (for Mpx/s). */
  seconds: Record<K, number>;
  pixels: Record<K, number>;
  /** The engine that denoised them: its name (onnx, tfjs) and its log line. */
  engine: string;
  engineDetail: string;
  /** The folder's manifest, as loaded for the run (its network, for the results). */
  manifest: ModelManifest;
}

/**
 * Denoises each set with the model folder `dir` on the engine `engine` asks for (engines/select.ts:
 * auto is ONNX Runtime where the model has a graph for its output, as `blindspot denoise` runs it),
 * so a benchmark's PSNR and Mpx/s are those a user gets; scores each set.
 */
export async function denoiseTestSets<K extends string>(
  dir: string,
  sets: Record<K, readonly TestImage[]>,
  engine: { engine: EngineChoice; threads?: number },
  sampling?: SamplingOptions,
): Promise<TestSetResult<K>> {
  const { model, manifest } = await loadModelFolder(dir);
  try {
    const runner = await openModelEngine(engine, { modelDir: dir, model, manifest, output: 'denoised', sampling });
    try {
      const result = { scores: {}, seconds: {}, pixels: {}, engine: runner.name, engineDetail: runner.describe(), manifest } as TestSetResult<K>;
      for (const key of Object.keys(sets) as K[]) {
        const t0 = performance.now();
        const outputs: Volume[] = [];
        for (const img of sets[key]) outputs.push(await denoiseVolume(model, manifest, img.noisy, { engine: runner, sampling }));
        result.seconds[key] = +((performance.now() - t0) / 1000).toFixed(1);
        result.pixels[key] = sets[key].reduce((n: number, img) => n + img.noisy.data.length, 0);
        result.scores[key] = score(sets[key], outputs);
      }
      return result;
    } finally {
      await runner.dispose();
    }
  } finally {
    model.dispose();
  }
}
