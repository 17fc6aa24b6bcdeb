/**
 * The GMM noise model (noise/gmm.ts) against the truth on simulated calibration stacks, for a few
 * (K, D): the largest relative error of its variance over the signal range (beside the histogram
 * model's), the mean -log p(x|s) on fresh pairs (beside the true model's where it has a density),
 * and the fit time. Two noises: Gaussian with var = 1.5 s + 40 (signal 10..800), and photon
 * counting, x = Poisson(s) + N(0, 1) (signal 1..30: skewed, where a mixture should beat one Gaussian).
 * Writes bench/results/noise-gmm.md and noise-gmm-<time>.json / noise-gmm-latest.json.
 *
 *   node dist/bench/noiseGmm.js [--frames 100] [--iterations 1000]
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PACKAGE_ROOT } from '../core/version.js';
import { Rng } from '../core/rng.js';
import { calibrateNoise, noiseVarianceFunction } from '../noise/model.js';
import { calibrationPairs } from '../noise/pairs.js';
import { fitGmmNoiseModel } from '../noise/gmmFit.js';
import { gmmLogDensity, gmmVariance } from '../noise/gmm.js';
import { benchArgs, gitCommit, machineInfo, writeResult } from './common.js';

const args = benchArgs(process.argv.slice(2));
const frames = Number(args.get('frames') ?? 100);
const iterations = Number(args.get('iterations') ?? 1000);
const [Y, X] = [64, 64];
const CONFIGS: [number, number][] = [
  [1, 1],
  [3, 1],
  [3, 2],
];

function poisson(lambda: number, rng: Rng): number {
  // Knuth's method: fine for the small means used here.
  const limit = Math.exp(-lambda);
  let k = 0;
  let p = rng.uniform();
  while (p > limit) {
    k++;
    p *= rng.uniform();
  }
  return k;
}

interface Noise {
  name: string;
  range: [number, number];
  draw: (s: number, rng: Rng) => number;
  variance: (s: number) => number;
  /** log p(x|s) of the true model, where it is a density. */
  trueLogDensity?: (s: number, x: number) => number;
}

const noises: Noise[] = [
  {
    name: 'gaussian, var = 1.5 s + 40',
    range: [10, 800],
    draw: (s, rng) => s + Math.sqrt(1.5 * s + 40) * rng.normal(),
    variance: (s) => 1.5 * s + 40,
    trueLogDensity: (s, x) => -0.5 * Math.log(2 * Math.PI * (1.5 * s + 40)) - (x - s) ** 2 / (2 * (1.5 * s + 40)),
  },
  { name: 'photon counting, Poisson(s) + N(0, 1)', range: [1, 30], draw: (s, rng) => poisson(s, rng) + rng.normal(), variance: (s) => s + 1 },
];

const rows: Record<string, unknown>[] = [];
for (const noise of noises) {
  const rng = new Rng(17);
  const P = Y * X;
  const signal = Float32Array.from({ length: P }, (_, p) => noise.range[0] + ((noise.range[1] - noise.range[0]) * p) / (P - 1));
  const stack = new Float32Array(frames * P);
  for (let f = 0; f < frames; f++) for (let p = 0; p < P; p++) stack[f * P + p] = noise.draw(signal[p], rng);
  // Fresh pairs for the likelihood, signal uniform over the range.
  const test = Array.from({ length: 20000 }, () => {
    const s = noise.range[0] + (noise.range[1] - noise.range[0]) * rng.uniform();
    return { s, x: noise.draw(s, rng) };
  });
  const grid = Array.from({ length: 41 }, (_, i) => noise.range[0] + ((noise.range[1] - noise.range[0]) * (0.05 + 0.9 * (i / 40))));
  const maxError = (variance: (s: number) => number): number => Math.max(...grid.map((s) => Math.abs(variance(s) / noise.variance(s) - 1)));
  const t0 = performance.now();
  const histogram = calibrateNoise('stack', stack, [frames, Y, X]);
  rows.push({ noise: noise.name, model: 'histogram', maxVarianceErrorPercent: 100 * maxError(noiseVarianceFunction(histogram)), fitSeconds: (performance.now() - t0) / 1000 });
  if (noise.trueLogDensity) {
    const nll = -test.reduce((sum, { s, x }) => sum + noise.trueLogDensity!(s, x), 0) / test.length;
    rows.push({ noise: noise.name, model: 'true', maxVarianceErrorPercent: 0, testNegLogLikelihood: nll });
  }
  const pairs = calibrationPairs('stack', stack, [frames, Y, X]);
  for (const [components, degree] of CONFIGS) {
    const t1 = performance.now();
    const model = await fitGmmNoiseModel('stack', pairs, { signalFrom: 'frame-mean', components, degree, iterations, seed: 1 });
    const fitSeconds = (performance.now() - t1) / 1000;
    const nll = -test.reduce((sum, { s, x }) => sum + gmmLogDensity(model, s, x), 0) / test.length;
    rows.push({ noise: noise.name, model: `gmm K=${components} D=${degree}`, maxVarianceErrorPercent: 100 * maxError((s) => gmmVariance(model, s)), testNegLogLikelihood: nll, fitSeconds });
    process.stderr.write(`${noise.name}: gmm K=${components} D=${degree}: -log p ${nll.toFixed(4)}, ${fitSeconds.toFixed(1)} s\n`);
  }
}

const command = ['node', ...process.argv.slice(1).map((a) => path.relative(PACKAGE_ROOT, a) || a)].join(' ');
const machine = machineInfo();
const fmt = (v: unknown, digits: number): string => (typeof v === 'number' ? v.toFixed(digits) : '');
const lines = [
  '# GMM noise model on simulated calibration stacks',
  '',
  `${frames} frames of ${Y}x${X} (a ramp over the signal range), seed 17; the GMM fitted with ${iterations} Adam iterations of 4096 pairs, seed 1.`,
  'Variance error: the largest |model / true - 1| over 41 signals spanning the middle 90% of the range. -log p: mean over 20,000 fresh pairs',
  '(for photon counting the truth is discrete, so it has no density to compare).',
  '',
  `- command: \`${command}\``,
  `- commit: ${gitCommit()}`,
  `- machine: ${machine.cpu}, ${machine.logicalCores} logical cores, ${machine.memoryGiB} GiB, ${machine.platform}, node ${machine.node}`,
  `- date: ${new Date().toISOString()}; load average at the end: ${os.loadavg()[0].toFixed(1)} (times are wall-clock on a shared machine)`,
  '',
  '| noise | model | max variance error | -log p (fresh pairs) | fit s |',
  '|---|---|---|---|---|',
  ...rows.map((r) => `| ${r.noise} | ${r.model} | ${fmt(r.maxVarianceErrorPercent, 1)}% | ${fmt(r.testNegLogLikelihood, 4)} | ${fmt(r.fitSeconds, 2)} |`),
  '',
];
await fs.mkdir(path.join(PACKAGE_ROOT, 'bench', 'results'), { recursive: true });
await fs.writeFile(path.join(PACKAGE_ROOT, 'bench', 'results', 'noise-gmm.md'), lines.join('\n'));
const json = await writeResult('noise-gmm', { frames, iterations, rows, loadAverage: os.loadavg() });
process.stdout.write(lines.join('\n') + `\n${json}\n`);
