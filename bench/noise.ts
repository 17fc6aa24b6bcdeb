/**
 * Noise-level estimation accuracy on Set12: Gaussian noise of sigma 10, 25, 50 added as float (not
 * clipped, seeded per case) to each of the 12 images; the full NLF fit as `blindspot noise` runs it
 * (sample, then network fit, defaults); reports sigma at the median intensity against the truth.
 * Writes bench/results/noise.md (table, command, commit, machine) and noise-<time>.json / noise-latest.json.
 *
 *   node dist/bench/noise.js [--sigmas 10,25,50] [--images 01,02,...]
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PACKAGE_ROOT, SHARED_DIR } from '../core/version.js';
import { Rng } from '../core/rng.js';
import { readImage } from '../storage/index.js';
import { fitNlf } from '../noise/nlf.js';
import { sampleNoise } from '../noise/sample.js';
import { benchArgs, gitCommit, machineInfo, writeResult } from './common.js';

const args = benchArgs(process.argv.slice(2));
const sigmas = (args.get('sigmas') ?? '10,25,50').split(',').map(Number);
const images = (args.get('images') ?? Array.from({ length: 12 }, (_, k) => String(k + 1).padStart(2, '0')).join(',')).split(',');
const set12 = path.join(SHARED_DIR, 'data', 'Set12');

interface Case {
  image: string;
  sigma: number;
  estimate: number;
  errorPercent: number;
  residualFilter: string;
  sampleSeconds: number;
  fitSeconds: number;
}

const cases: Case[] = [];
for (const image of images) {
  const clean = await readImage(path.join(set12, `${image}.png`));
  for (const sigma of sigmas) {
    // The same noise as test/noise.test.ts: seed 1000 x image number + sigma.
    const rng = new Rng(1000 * Number(image) + sigma);
    const noisy = new Float32Array(clean.data.length);
    for (let i = 0; i < noisy.length; i++) noisy[i] = clean.data[i] + sigma * rng.normal();
    const t0 = performance.now();
    const sample = sampleNoise({ name: image, data: noisy, shape: clean.shape, sampleType: 'float32' });
    const t1 = performance.now();
    const nlf = fitNlf(sample);
    const t2 = performance.now();
    cases.push({
      image,
      sigma,
      estimate: nlf.sigma,
      errorPercent: 100 * (nlf.sigma / sigma - 1),
      residualFilter: nlf.residualFilter ?? 'unknown',
      sampleSeconds: (t1 - t0) / 1000,
      fitSeconds: (t2 - t1) / 1000,
    });
    process.stderr.write(`${image} sigma ${sigma}: ${nlf.sigma.toFixed(3)} (${cases.at(-1)!.errorPercent.toFixed(2)}%, ${nlf.residualFilter})\n`);
  }
}

const summary = sigmas.map((sigma) => {
  const errors = cases.filter((c) => c.sigma === sigma).map((c) => c.errorPercent);
  return { sigma, minErrorPercent: Math.min(...errors), maxErrorPercent: Math.max(...errors), maxAbsErrorPercent: Math.max(...errors.map(Math.abs)) };
});
const command = ['node', ...process.argv.slice(1).map((a) => path.relative(PACKAGE_ROOT, a) || a)].join(' ');
const machine = machineInfo();
const lines = [
  '# Noise-level estimation on Set12',
  '',
  'Gaussian noise added as float (not clipped) to each Set12 image (seed 1000 x image + sigma), full NLF fit with defaults',
  '(`sampleNoise` then `fitNlf`, as `blindspot noise`); the estimate is the noise std at the image\'s median intensity.',
  '',
  `- command: \`${command}\``,
  `- commit: ${gitCommit()}`,
  `- machine: ${machine.cpu}, ${machine.logicalCores} logical cores, ${machine.memoryGiB} GiB, ${machine.platform}, node ${machine.node}`,
  `- date: ${new Date().toISOString()}`,
  '',
  '| image | ' + sigmas.map((s) => `sigma ${s}`).join(' | ') + ' |',
  '|---|' + sigmas.map(() => '---').join('|') + '|',
  ...images.map((image) => {
    const row = sigmas.map((sigma) => {
      const c = cases.find((k) => k.image === image && k.sigma === sigma)!;
      return `${c.estimate.toFixed(2)} (${c.errorPercent >= 0 ? '+' : ''}${c.errorPercent.toFixed(1)}%, ${c.residualFilter === 'learned-5x5' ? 'learned' : 'Immerkaer'})`;
    });
    return `| ${image} | ${row.join(' | ')} |`;
  }),
  '',
  '| sigma | min error | max error | max abs error |',
  '|---|---|---|---|',
  ...summary.map((s) => `| ${s.sigma} | ${s.minErrorPercent.toFixed(2)}% | ${s.maxErrorPercent.toFixed(2)}% | ${s.maxAbsErrorPercent.toFixed(2)}% |`),
  '',
  `Mean time per case: sample ${(cases.reduce((t, c) => t + c.sampleSeconds, 0) / cases.length).toFixed(2)} s, fit ${(cases.reduce((t, c) => t + c.fitSeconds, 0) / cases.length).toFixed(2)} s (load average at the end: ${os.loadavg()[0].toFixed(1)}).`,
  '',
];
await fs.mkdir(path.join(PACKAGE_ROOT, 'bench', 'results'), { recursive: true });
await fs.writeFile(path.join(PACKAGE_ROOT, 'bench', 'results', 'noise.md'), lines.join('\n'));
const json = await writeResult('noise', { sigmas, images, summary, cases });
process.stdout.write(lines.join('\n') + `\n${json}\n`);
