/**
 * The figure of docs/diverse.md: noisy | three DivNoising posterior samples | their MMSE | the
 * per-pixel standard deviation over the samples, on a crop of a BSD68 image at Gaussian sigma 25
 * (noise added as float, seeded), the VAE trained on that noisy crop alone (self-supervised).
 *
 *   npm run figure:diverse -- [--image test003.png] [--crop 128] [--steps 300] [--samples 32] [--seed 1]
 *     [--out docs/diverse-figure.png]
 *
 * The std panel is scaled into the image's window (its caption gives the scale). The defaults take
 * a few minutes on 2 shared cores (wasm); the PSNRs of the noisy crop, one sample and the MMSE are
 * printed and written beside the figure as JSON (the same name, .json).
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { initBackend } from '../backend/select.js';
import { psnr } from '../core/metrics.js';
import { Rng } from '../core/rng.js';
import { PACKAGE_ROOT, SHARED_DIR } from '../core/version.js';
import { addGaussianNoise } from '../core/synthetic.js';
import type { Volume } from '../core/volume.js';
import { loadModelFolder } from '../models/io.js';
import { denoiseVolume } from '../pipeline/denoise.js';
import { writeMontage } from '../pipeline/figures.js';
import { trainModel } from '../pipeline/train.js';
import { readImage } from '../storage/index.js';
import { benchArgs, gitCommit, machineInfo } from './common.js';

const SIGMA = 25;

async function main(): Promise<void> {
  const args = benchArgs(process.argv.slice(2));
  const imageName = args.get('image') ?? 'test003.png';
  const crop = Number(args.get('crop') ?? 128);
  const steps = Number(args.get('steps') ?? 300);
  const samples = Number(args.get('samples') ?? 32);
  const seed = Number(args.get('seed') ?? 1);
  const out = path.resolve(args.get('out') ?? path.join(PACKAGE_ROOT, 'docs', 'diverse-figure.png'));
  await initBackend({ backend: 'wasm' });
  const file = path.join(SHARED_DIR, 'data', 'BSD68', imageName);
  const image = await readImage(file).catch(() => {
    console.error(`figure:diverse needs ${file} (the shared benchmark data); it is absent here.`);
    process.exit(2);
  });
  const [h, w] = image.shape;
  const y0 = Math.floor((h - crop) / 2);
  const x0 = Math.floor((w - crop) / 2);
  const clean = new Float32Array(crop * crop);
  for (let y = 0; y < crop; y++) clean.set(image.data.subarray((y0 + y) * w + x0, (y0 + y) * w + x0 + crop), y * crop);
  const noisy: Volume = { data: addGaussianNoise(clean, SIGMA, new Rng(seed)), shape: [crop, crop], sampleType: 'float32' };
  const modelDir = await fs.mkdtemp(path.join(os.tmpdir(), 'blindspot-diverse-figure-'));
  try {
    const t0 = performance.now();
    await trainModel({
      volumes: [{ volume: noisy, name: `${imageName} crop` }],
      out: modelDir,
      overwrite: true,
      method: 'divnoising',
      steps,
      batchSize: 8,
      patchShape: [64, 64],
      network: { depth: 2, filters: 16, latentChannels: 16 },
      learningRate: 2e-3,
      seed,
      noiseFits: false,
      prior: { kind: 'gaussian', sigma: SIGMA },
    });
    const trainSeconds = (performance.now() - t0) / 1000;
    const { model, manifest } = await loadModelFolder(modelDir);
    const sampling = { samples, seed };
    const draws: Volume[] = [];
    for (let k = 0; k < 3; k++) draws.push(await denoiseVolume(model, manifest, noisy, { output: 'sample', sampling: { ...sampling, sampleIndex: k } }));
    const mmse = await denoiseVolume(model, manifest, noisy, { sampling });
    const std = await denoiseVolume(model, manifest, noisy, { output: 'uncertainty', sampling });
    model.dispose();
    const maxStd = Math.max(...std.data);
    const window: [number, number] = [0, 255];
    await writeMontage(
      out,
      [
        { data: noisy.data, caption: `noisy (sigma ${SIGMA})` },
        ...draws.map((d, k) => ({ data: d.data, caption: `sample ${k + 1}` })),
        { data: mmse.data, caption: `MMSE of ${samples}` },
        { data: std.data.map((v) => (255 * v) / maxStd), caption: `std (white = ${maxStd.toFixed(0)})` },
      ],
      [crop, crop],
      window,
    );
    const result = {
      command: ['npm', 'run', 'figure:diverse', '--', ...process.argv.slice(2)],
      commit: gitCommit(),
      machine: machineInfo(),
      loadAverage: os.loadavg(),
      image: imageName,
      crop,
      steps,
      samples,
      trainSeconds,
      psnr: { noisy: psnr(clean, noisy.data, 255), sample: draws.map((d) => psnr(clean, d.data, 255)), mmse: psnr(clean, mmse.data, 255) },
      meanStd: std.data.reduce((s, v) => s + v, 0) / std.data.length,
    };
    await fs.writeFile(out.replace(/\.png$/i, '.json'), JSON.stringify(result, null, 2) + '\n');
    console.log(JSON.stringify(result.psnr), `train ${trainSeconds.toFixed(0)} s -> ${out}`);
  } finally {
    await fs.rm(modelDir, { recursive: true, force: true });
  }
}

await main();
