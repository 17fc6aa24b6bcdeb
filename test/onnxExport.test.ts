/**
 * ONNX export (models/onnx/): every network kind in 2D and 3D, written by our own protobuf writer,
 * run by ONNX Runtime (onnxruntime-node, CPU) and held to the tfjs-cpu prediction within 1e-4 of the
 * output's range; Gaussian-prior models end in the posterior mean `blindspot denoise` computes.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { denoisingTileModel, type NoiseSpec } from '../models/bayes.js';
import { buildNetwork, type NetworkConfig } from '../models/network.js';
import { exportOnnx } from '../models/onnx/export.js';
import { errorOverRange, randomInput, randomiseWeights, runOnnx, testManifest } from './fixtures/onnxModels.js';

const TOLERANCE = 1e-4;

/** Debian's python3 with python3-onnx, for onnx.checker; null (tests skip, saying so) when absent. */
const checkerPython = ((): string | null => {
  const python = '/usr/bin/python3';
  const probe = spawnSync(python, ['-c', 'import onnx'], { encoding: 'utf8' });
  return probe.status === 0 ? python : null;
})();
if (checkerPython === null) console.warn('onnx.checker tests skipped: /usr/bin/python3 cannot import onnx (apt-get install python3-onnx)');

let scratch: string;
beforeAll(async () => {
  await tf.setBackend('cpu');
  await tf.ready();
  scratch = mkdtempSync(path.join(tmpdir(), 'blindspot-onnx-'));
});
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

/** Graphs exported by the cases below, checked together by one Python process at the end. */
const exportedFiles: string[] = [];

function keepForChecker(bytes: Uint8Array, name: string): void {
  const file = path.join(scratch, `${name}.onnx`);
  writeFileSync(file, bytes);
  exportedFiles.push(file);
}

interface Case {
  name: string;
  network: NetworkConfig;
  prior?: NoiseSpec;
  /** Input shapes (NHWC / NDHWC) run through one exported graph: dynamic batch and spatial sizes. */
  shapes: number[][];
}

const cases: Case[] = [
  { name: 'U-Net 2D n2v', network: { dims: 2, depth: 2, filters: 4, kernelSize: 3, batchNorm: true, variant: 'n2v' }, shapes: [[2, 16, 24, 1], [1, 12, 8, 1]] },
  { name: 'U-Net 2D n2v2 centred', network: { dims: 2, depth: 2, filters: 4, kernelSize: 3, batchNorm: true, variant: 'n2v2', blurPool: 'centred' }, shapes: [[1, 16, 20, 1]] },
  { name: 'U-Net 2D n2v2 trailing', network: { dims: 2, depth: 2, filters: 4, kernelSize: 3, batchNorm: true, variant: 'n2v2' }, shapes: [[1, 8, 16, 1]] },
  { name: 'U-Net 2D 5x5 no batch norm', network: { dims: 2, depth: 1, filters: 3, kernelSize: 5, batchNorm: false, variant: 'n2v' }, shapes: [[1, 10, 12, 1]] },
  { name: 'U-Net 3D n2v', network: { dims: 3, depth: 1, filters: 4, kernelSize: 3, batchNorm: true, variant: 'n2v' }, shapes: [[1, 8, 6, 10, 1], [2, 4, 4, 4, 1]] },
  { name: 'U-Net 3D n2v2 centred', network: { dims: 3, depth: 2, filters: 2, kernelSize: 3, batchNorm: true, variant: 'n2v2', blurPool: 'centred' }, shapes: [[1, 8, 8, 12, 1]] },
  {
    name: 'U-Net 2D Gaussian prior',
    network: { dims: 2, depth: 1, filters: 4, kernelSize: 3, batchNorm: true, variant: 'n2v', outputChannels: 2 },
    prior: { kind: 'gaussian', sigma: 9 },
    shapes: [[1, 12, 14, 1]],
  },
  {
    name: 'U-Net 3D Poisson-Gaussian prior',
    network: { dims: 3, depth: 1, filters: 3, kernelSize: 3, batchNorm: true, variant: 'n2v', outputChannels: 2 },
    prior: { kind: 'poisson-gaussian', a: 0.8, b: 4 },
    shapes: [[1, 4, 6, 8, 1]],
  },
  { name: 'laine19 2D', network: { kind: 'laine19', dims: 2, depth: 2, filters: 4 }, shapes: [[1, 16, 12, 1], [2, 8, 8, 1]] },
  { name: 'laine19 2D Poisson-Gaussian prior', network: { kind: 'laine19', dims: 2, depth: 1, filters: 3, outputChannels: 2 }, prior: { kind: 'poisson-gaussian', a: 1.5, b: 2 }, shapes: [[1, 10, 8, 1]] },
  { name: 'laine19 3D Gaussian prior', network: { kind: 'laine19', dims: 3, depth: 1, filters: 2, outputChannels: 2 }, prior: { kind: 'gaussian', sigma: 12 }, shapes: [[1, 4, 6, 8, 1]] },
  { name: 'dbsn 2D', network: { kind: 'dbsn', dims: 2, filters: 4, blocks: 2 }, shapes: [[1, 13, 17, 1]] },
  { name: 'dbsn 2D Poisson-Gaussian prior', network: { kind: 'dbsn', dims: 2, filters: 4, blocks: 2, outputChannels: 2 }, prior: { kind: 'poisson-gaussian', a: 0.5, b: 10 }, shapes: [[2, 9, 11, 1]] },
  { name: 'dbsn 3D Gaussian prior', network: { kind: 'dbsn', dims: 3, filters: 3, blocks: 1, outputChannels: 2 }, prior: { kind: 'gaussian', sigma: 6 }, shapes: [[1, 5, 7, 6, 1]] },
];

describe('ONNX export: ONNX Runtime gives what tfjs gives', () => {
  for (const c of cases) {
    it(c.name, async () => {
      const model = buildNetwork(c.network, 7);
      randomiseWeights(model, 11);
      const manifest = testManifest(c.network, { prior: c.prior, method: c.network.kind === 'laine19' || c.network.kind === 'dbsn' ? c.network.kind : 'n2v' });
      const { bytes, info } = exportOnnx(model, manifest);
      expect(info.opset).toBeGreaterThanOrEqual(17);
      expect(info.inputs[0].shape).toEqual(c.network.dims === 2 ? ['batch', 'y', 'x', 1] : ['batch', 'z', 'y', 'x', 1]);
      expect(info.outputs.map((o) => o.role)).toEqual(c.prior ? ['denoised', 'uncertainty', 'prior-mean'] : ['denoised']);
      expect(info.warnings).toEqual([]);
      const denoise = denoisingTileModel(model, manifest, 'denoised');
      const uncertainty = c.prior ? denoisingTileModel(model, manifest, 'uncertainty') : null;
      for (const [i, shape] of c.shapes.entries()) {
        const x = randomInput(shape, 100 + i);
        const onnx = await runOnnx(bytes, x, shape);
        const input = tf.tensor(x, shape);
        const apply = (m: typeof denoise): Float32Array => tf.tidy(() => ((typeof m === 'function' ? m(input) : m.predict(input)) as tf.Tensor).dataSync() as Float32Array);
        const reference = { denoised: apply(denoise), std: uncertainty ? apply(uncertainty) : null };
        input.dispose();
        expect(onnx.output.dims).toEqual(shape);
        expect(new Set(reference.denoised).size).toBeGreaterThan(10);
        expect(errorOverRange(onnx.output.data, reference.denoised)).toBeLessThan(TOLERANCE);
        if (reference.std) expect(errorOverRange(onnx.uncertainty.data, reference.std)).toBeLessThan(TOLERANCE);
      }
      keepForChecker(bytes, c.name.replace(/\W+/g, '_'));
      model.dispose();
    });
  }

  it('a 2-channel network whose noise the graph cannot express exports the prior mean, with a warning', async () => {
    const network: NetworkConfig = { dims: 2, depth: 1, filters: 3, kernelSize: 3, batchNorm: false, variant: 'n2v', outputChannels: 2 };
    const model = buildNetwork(network, 2);
    randomiseWeights(model, 3);
    const shape = [1, 8, 12, 1];
    const x = randomInput(shape, 4);
    const prediction = tf.tidy(() => (model.predict(tf.tensor(x, shape)) as tf.Tensor).dataSync() as Float32Array);
    const priorMean = prediction.filter((_, i) => i % 2 === 0);
    const unknownNoise = { kind: 'nlf-table', table: [] } as unknown as NoiseSpec;
    for (const manifest of [testManifest(network), testManifest(network, { prior: unknownNoise })]) {
      const { bytes, info } = exportOnnx(model, manifest);
      expect(info.warnings.join('\n')).toMatch(/prior mean/);
      expect(info.outputs.map((o) => o.role)).toEqual(['denoised']);
      const onnx = await runOnnx(bytes, x, shape);
      expect(errorOverRange(onnx.output.data, priorMean)).toBeLessThan(TOLERANCE);
    }
    model.dispose();
  });

  it.skipIf(checkerPython === null)('onnx.checker.check_model(full_check=True) passes on every graph above', () => {
    expect(exportedFiles.length).toBe(cases.length);
    const script = 'import onnx, sys\nfor f in sys.argv[1:]:\n    onnx.checker.check_model(onnx.load(f), full_check=True)\nprint(len(sys.argv) - 1)';
    const checked = execFileSync(checkerPython!, ['-c', script, ...exportedFiles], { encoding: 'utf8' });
    expect(checked.trim()).toBe(String(cases.length));
  });
});
