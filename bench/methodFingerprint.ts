/**
 * A behaviour fingerprint of every training method: a short seeded run on a tiny synthetic image
 * (2D, and a few in 3D), recording the losses of every step and validation, the manifest's method
 * fields, a sha256 of the saved weights and of the image denoised from the saved folder. A refactor
 * that should not change behaviour must reproduce it byte for byte:
 *
 *   npm run build && node dist/bench/methodFingerprint.js --out bench/results/method-fingerprints.json
 *   node dist/bench/methodFingerprint.js --check bench/results/method-fingerprints.json
 *
 * `--check` exits 1 naming every case whose fingerprint differs. `--keep DIR` also leaves the trained
 * model folders in DIR (the source of test/fixtures/models). Runs on the cpu backend (one thread,
 * no thread-count dependence); about a minute on one core.
 */
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { initBackend } from '../backend/select.js';
import { Rng } from '../core/rng.js';
import { addGaussianNoise, syntheticCells } from '../core/synthetic.js';
import type { Shape, Volume } from '../core/volume.js';
import { loadModelFolder, MODEL_JSON, WEIGHTS_BIN, type MethodName } from '../models/io.js';
import { denoiseVolume } from '../pipeline/denoise.js';
import { trainModel, type TrainOptions } from '../pipeline/train.js';
import { benchArgs } from './common.js';

interface FingerprintCase {
  name: string;
  method: MethodName;
  dims: 2 | 3;
  extra?: Partial<TrainOptions>;
  paired?: 'noisy' | 'clean';
  output?: 'denoised' | 'uncertainty' | 'prior-mean';
}

const tinyUNet = { depth: 1, filters: 4, batchNorm: false };

const cases: FingerprintCase[] = [
  { name: 'n2v-2d', method: 'n2v', dims: 2, extra: { network: tinyUNet } },
  { name: 'n2v-2d-batchnorm-mae', method: 'n2v', dims: 2, extra: { network: { depth: 1, filters: 4, batchNorm: true }, loss: 'mae' } },
  { name: 'n2v-2d-prior-gaussian', method: 'n2v', dims: 2, extra: { network: tinyUNet, prior: { kind: 'gaussian', sigma: 20 } } },
  { name: 'n2v-2d-prior-mean', method: 'n2v', dims: 2, extra: { network: tinyUNet, prior: { kind: 'gaussian', sigma: 20 } }, output: 'prior-mean' },
  { name: 'n2v2-2d', method: 'n2v2', dims: 2, extra: { network: tinyUNet } },
  { name: 'structn2v-2d', method: 'structn2v', dims: 2, extra: { network: tinyUNet, structMask: 'horizontal:3' } },
  { name: 'noise2self-2d', method: 'noise2self', dims: 2, extra: { network: tinyUNet, grid: 3 } },
  { name: 'noise2info-2d', method: 'noise2info', dims: 2, extra: { network: tinyUNet } },
  { name: 'laine19-2d', method: 'laine19', dims: 2, extra: { network: { depth: 1, filters: 4 } } },
  { name: 'laine19-2d-prior-learned', method: 'laine19', dims: 2, extra: { network: { depth: 1, filters: 4 }, prior: 'learned' }, output: 'uncertainty' },
  { name: 'dbsn-2d', method: 'dbsn', dims: 2, extra: { network: { filters: 4, blocks: 1 }, prior: { kind: 'poisson-gaussian', a: 0.5, b: 300 } } },
  { name: 'n2n-2d', method: 'n2n', dims: 2, extra: { network: tinyUNet }, paired: 'noisy' },
  { name: 'care-2d', method: 'care', dims: 2, extra: { network: tinyUNet }, paired: 'clean' },
  { name: 'n2v-3d', method: 'n2v', dims: 3, extra: { network: tinyUNet } },
  { name: 'noise2info-3d', method: 'noise2info', dims: 3, extra: { network: tinyUNet } },
  { name: 'care-3d', method: 'care', dims: 3, extra: { network: tinyUNet }, paired: 'clean' },
];

function problem(shape: Shape, seed: number): { clean: Volume; noisy: Volume; second: Volume } {
  const rng = new Rng(seed);
  const shape3 = (shape.length === 2 ? [1, ...shape] : shape) as [number, number, number];
  const cells = syntheticCells(shape3, rng, { blobs: Math.round((shape3[1] * shape3[2]) / 50), filaments: 3 });
  const clean = cells.data.map((v) => v * 100);
  return {
    clean: { data: clean, shape, sampleType: 'float32' },
    noisy: { data: addGaussianNoise(clean, 20, rng), shape, sampleType: 'float32' },
    second: { data: addGaussianNoise(clean, 20, rng), shape, sampleType: 'float32' },
  };
}

const sha256 = (bytes: Uint8Array | string): string => createHash('sha256').update(bytes).digest('hex');

async function fingerprint(c: FingerprintCase, dir: string): Promise<Record<string, unknown>> {
  const { clean, noisy, second } = problem(c.dims === 2 ? ([40, 40] as unknown as Shape) : ([8, 24, 24] as unknown as Shape), 11);
  const target = c.paired === 'clean' ? clean : c.paired === 'noisy' ? second : undefined;
  const out = path.join(dir, c.name);
  const manifest = await trainModel({
    volumes: [{ volume: noisy, name: 'noisy', ...(target ? { target, targetName: 'target' } : {}) }],
    out,
    method: c.method,
    steps: 6,
    batchSize: 2,
    patchShape: c.dims === 2 ? [16, 16] : [4, 8, 8],
    learningRate: 4e-3,
    validateEvery: 3,
    valPatches: 2,
    valFraction: 0,
    seed: 7,
    noiseFits: false,
    // The recorded fingerprints are tfjs' gradients; ONNX Runtime's agree to float rounding, not byte for byte.
    trainEngine: 'tfjs',
    command: ['fingerprint', c.name],
    ...c.extra,
  });
  const { model, manifest: saved } = await loadModelFolder(out);
  let denoisedHash: string;
  try {
    const denoised = await denoiseVolume(model, saved, noisy, { output: c.output ?? 'denoised' });
    denoisedHash = sha256(new Uint8Array(denoised.data.buffer, denoised.data.byteOffset, denoised.data.byteLength));
  } finally {
    model.dispose();
  }
  // The ONNX record (file list and the graph's sha256) is an artefact written after training, not
  // training behaviour; its own tests hold the graph to the tfjs model (test/onnxExport.test.ts).
  const { createdBy: _c, training, history, onnx: _onnx, ...rest } = manifest;
  const { wallSeconds: _w, ...trainingRest } = training;
  return {
    manifest: { ...rest, training: trainingRest },
    history: history.map(({ seconds: _s, ...h }) => h),
    weights: sha256(await fs.readFile(path.join(out, WEIGHTS_BIN))),
    topology: sha256(JSON.stringify(JSON.parse(await fs.readFile(path.join(out, MODEL_JSON), 'utf8')).modelTopology)),
    denoised: denoisedHash,
  };
}

async function main(): Promise<void> {
  const args = benchArgs(process.argv.slice(2));
  await initBackend({ backend: 'cpu' });
  const keep = args.get('keep');
  const dir = keep ?? (await fs.mkdtemp(path.join(os.tmpdir(), 'blindspot-fingerprint-')));
  const only = args.get('cases')?.split(',');
  const results: Record<string, unknown> = {};
  try {
    for (const c of cases) {
      if (only && !only.includes(c.name)) continue;
      const t0 = performance.now();
      results[c.name] = await fingerprint(c, dir);
      console.error(`${c.name}: ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    }
  } finally {
    if (!keep) await fs.rm(dir, { recursive: true, force: true });
  }
  const check = args.get('check');
  if (check) {
    const expected = JSON.parse(await fs.readFile(check, 'utf8')) as { cases: Record<string, unknown> };
    const differing = Object.keys(results).filter((k) => JSON.stringify(results[k]) !== JSON.stringify(expected.cases[k]));
    for (const k of differing) console.error(`DIFFERS: ${k}\n  expected ${JSON.stringify(expected.cases[k])}\n  got      ${JSON.stringify(results[k])}`);
    console.log(differing.length === 0 ? `all ${Object.keys(results).length} fingerprints identical to ${check}` : `${differing.length} fingerprint(s) differ`);
    process.exitCode = differing.length === 0 ? 0 : 1;
    return;
  }
  const text = JSON.stringify({ note: 'bench/methodFingerprint.ts: cpu backend, 6 steps of batch 2 per case', cases: results }, null, 1) + '\n';
  if (args.get('out')) await fs.writeFile(args.get('out')!, text);
  else process.stdout.write(text);
}

await main();
