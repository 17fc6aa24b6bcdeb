/**
 * Step-for-step parity with the PyTorch reference N2V (../shared/reference/n2v_torch.py): both
 * implementations train N steps on the SAME noisy Train400 (the reference's float32 TIFFs, sigma 25,
 * seed 7) and are scored on the same noisy BSD68 (seed 11) against the clean PNGs, mean PSNR per
 * image (peak 255). Writes both per-step training-loss curves, our validation losses and both PSNRs
 * to bench/results/parity-<name>.json.
 *
 *   npm run bench:parity -- --steps 200 [--recipe reference|default] [--name NAME] [--limit 68]
 *     [--torch true|false] [--torch-args "--widths csbdeep ..."] [--work /tmp/n2vref-work] [--threads 2]
 *     [--widths halving|level] [--init glorot|torch] [--bn-eps F] [--adam-eps F] [--val-fraction F]
 *     [--lr-schedule plateau|constant]
 *
 * --recipe reference (default) runs ours with every switch set as the reference does it: 'level'
 * U-Net widths, PyTorch initialisation, batch-norm epsilon 1e-5, Adam epsilon 1e-8, no validation
 * split (--val-fraction 0), a constant learning rate. --recipe default: blindspot's defaults. A
 * single flag overrides one factor of the chosen recipe (the A/Bs of docs/parity.md).
 * The PyTorch side is bench/n2v_torch_parity.py (the reference plus a per-step loss log), run with
 * /usr/bin/python3 (Debian python3-torch); --torch false skips it.
 */
import { execFile } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { initBackend, type BackendChoice } from '../backend/select.js';
import { psnr } from '../core/metrics.js';
import { PACKAGE_ROOT, SHARED_DIR } from '../core/version.js';
import { loadModelFolder } from '../models/io.js';
import { trainModel, type NamedVolume } from '../pipeline/train.js';
import { denoiseVolume } from '../pipeline/denoise.js';
import { expandInputs, readImage } from '../storage/index.js';
import { benchArgs, writeResult } from './common.js';
import { benchRecipe } from './referenceRecipe.js';

const run = promisify(execFile);

async function main(): Promise<void> {
  const args = benchArgs(process.argv.slice(2));
  const steps = Number(args.get('steps') ?? 200);
  const limit = Number(args.get('limit') ?? 68);
  const recipeName = args.get('recipe') ?? 'reference';
  const { network, train } = benchRecipe(recipeName, args);
  const work = path.resolve(args.get('work') ?? '/tmp/n2vref-work');
  const threads = Number(args.get('threads') ?? 2);
  const withTorch = (args.get('torch') ?? 'true') !== 'false';
  const torchArgs = (args.get('torch-args') ?? '').split(' ').filter(Boolean);
  const name = args.get('name') ?? `${recipeName}-${steps}`;

  // The PyTorch side first: it also writes the noisy TIFFs both sides use (when absent).
  let torch: Record<string, unknown> | null = null;
  const torchScript = path.join(PACKAGE_ROOT, 'bench', 'n2v_torch_parity.py');
  if (withTorch) {
    const out = path.join(os.tmpdir(), `parity-torch-${process.pid}.json`);
    const argv = [torchScript, '--steps', String(steps), '--threads', String(threads), '--work', work, '--limit', String(limit), '--out', out, ...torchArgs];
    console.error(`pytorch: /usr/bin/python3 ${argv.join(' ')}`);
    await run('/usr/bin/python3', argv, { maxBuffer: 64 * 2 ** 20 });
    torch = JSON.parse(await fs.readFile(out, 'utf8')) as Record<string, unknown>;
    await fs.rm(out, { force: true });
    console.error(`pytorch: ${String(torch.psnr)} dB after ${steps} steps`);
  } else {
    await fs.access(path.join(work, 'Train400')).catch(() => {
      throw new Error(`${work}/Train400 is absent: run once with --torch true (it writes the reference's noisy data)`);
    });
  }

  const backend = await initBackend({ backend: (args.get('backend') ?? 'wasm') as BackendChoice, threads });
  const volumes: NamedVolume[] = [];
  for (const f of await expandInputs([path.join(work, 'Train400')])) volumes.push({ volume: await readImage(f), name: f });
  const modelDir = await fs.mkdtemp(path.join(os.tmpdir(), 'blindspot-parity-'));
  const losses: number[] = [];
  const validation: Array<{ step: number; valLoss: number; learningRate: number }> = [];
  const t0 = performance.now();
  const manifest = await trainModel({
    volumes,
    out: modelDir,
    method: 'n2v',
    steps,
    batchSize: 16,
    patchShape: [64, 64],
    learningRate: 4e-4,
    maskFraction: 0.015,
    strategy: 'uniform-without-centre',
    network,
    ...train,
    seed: 1,
    backend,
    noiseFits: false,
    onEvent: (e) => {
      if (e.type === 'step') losses.push(+e.loss.toFixed(6));
      if (e.type === 'validation') validation.push({ step: e.step, valLoss: +e.valLoss.toFixed(6), learningRate: e.learningRate });
      if (e.type === 'step' && e.step % 50 === 0) console.error(`ours: step ${e.step} loss ${e.loss.toFixed(4)} ${((performance.now() - t0) / 1000).toFixed(0)} s`);
    },
    command: ['bench:parity'],
  });
  const trainSeconds = (performance.now() - t0) / 1000;
  const { model } = await loadModelFolder(modelDir);
  const scores: number[] = [];
  const noisyFiles = (await expandInputs([path.join(work, 'BSD68')])).slice(0, limit);
  for (const f of noisyFiles) {
    const clean = await readImage(path.join(SHARED_DIR, 'data', 'BSD68', path.basename(f).replace(/\.tiff?$/, '.png')));
    const denoised = await denoiseVolume(model, manifest, await readImage(f));
    scores.push(psnr(clean.data, denoised.data, 255));
  }
  model.dispose();
  await fs.rm(modelDir, { recursive: true, force: true });
  const ours = {
    implementation: 'blindspot',
    backend: backend.name,
    threads: backend.threads,
    recipe: recipeName,
    network: manifest.network,
    training: { ...train, trainImages: manifest.training.inputs.length, bestStep: manifest.training.bestStep, outputOffsetRemoved: manifest.outputOffsetRemoved },
    normalisation: manifest.normalisation,
    psnr: +(scores.reduce((a, b) => a + b, 0) / scores.length).toFixed(3),
    images: scores.length,
    perImage: scores.map((v) => +v.toFixed(3)),
    trainSeconds: +trainSeconds.toFixed(1),
    validation,
    losses,
  };
  const file = await writeResult(`parity-${name}`, { steps, load: os.loadavg().map((l) => +l.toFixed(2)), ours, torch });
  console.log(`parity ${name}: ${steps} steps, ours ${ours.psnr} dB${torch ? `, pytorch ${String(torch.psnr)} dB` : ''} (${scores.length} BSD68 images); written ${file}`);
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
