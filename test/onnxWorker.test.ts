/**
 * The ONNX Runtime engine runs its session in a worker thread (engines/onnxWorkerSession.ts): its
 * output bytes equal an in-thread session's (the determinism that keeps shards byte-identical), the
 * main thread stays free while a batch runs, a worker that dies rejects every pending batch with a
 * clear error, and dispose stops the thread.
 */
import { spawnSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { beforeAll, describe, expect, it } from 'vitest';
import { Rng } from '../core/rng.js';
import { PACKAGE_ROOT } from '../core/version.js';
import { openOnnxEngine } from '../engines/onnxRuntime.js';
import { onnxWorkerFile, WorkerRunner } from '../engines/onnxWorkerSession.js';
import { buildNetwork, type NetworkConfig } from '../models/network.js';
import { exportOnnx } from '../models/onnx/export.js';
import { randomiseWeights, testManifest } from './fixtures/onnxModels.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
  await tf.ready();
});

function onnxBytes(network: NetworkConfig): Uint8Array {
  const model = buildNetwork(network, 5);
  randomiseWeights(model, 13);
  try {
    return exportOnnx(model, testManifest(network)).bytes;
  } finally {
    model.dispose();
  }
}

const voxels = (shape: readonly number[]): number => shape.reduce((a, b) => a * b, 1);

function randomBatch(shape: number[], seed: number): Float32Array {
  const rng = new Rng(seed);
  return Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => rng.normal());
}

const UNET_2D: NetworkConfig = { dims: 2, depth: 2, filters: 4, kernelSize: 3, batchNorm: true, variant: 'n2v' };
const UNET_3D: NetworkConfig = { dims: 3, depth: 1, filters: 4, kernelSize: 3, batchNorm: true, variant: 'n2v' };

describe('the worker engine gives the in-thread session its bytes', () => {
  for (const [name, network, shape] of [
    ['U-Net 2D', UNET_2D, [2, 36, 44, 1]],
    ['U-Net 3D', UNET_3D, [1, 8, 16, 12, 1]],
  ] as const) {
    it(name, async () => {
      const model = onnxBytes(network);
      const worker = await openOnnxEngine({ model, device: 'cpu', threads: 2 });
      const inThread = await openOnnxEngine({ model, device: 'cpu', threads: 2, inWorker: false });
      try {
        expect(worker.describe()).toContain('in a worker thread');
        expect(inThread.describe()).not.toContain('worker');
        for (const seed of [1, 2]) {
          const batch = randomBatch([...shape], seed);
          const before = batch.slice();
          const [a, b] = await Promise.all([worker.predict(batch, shape), inThread.predict(batch, shape)]);
          expect(batch, 'the input is left as it was').toEqual(before);
          expect(a.length).toBe(batch.length);
          expect(new Set(a).size).toBeGreaterThan(20);
          expect(Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength))).toBe(true);
        }
        await expect(worker.predict(randomBatch([1, 8, 8], 3), [1, 8, 8]), 'a wrong rank is ONNX Runtime\'s error, passed on').rejects.toThrow(/onnx engine/);
        // The engine still works after a failed batch.
        expect((await worker.predict(randomBatch([...shape], 4), shape)).length).toBe(voxels(shape));
      } finally {
        await worker.dispose();
        await inThread.dispose();
      }
      await expect(worker.predict(randomBatch([...shape], 1), shape)).rejects.toThrow(/disposed/);
    });
  }
});

describe('the worker thread', () => {
  let model: Uint8Array;
  beforeAll(() => {
    model = onnxBytes(UNET_2D);
  });
  const shape = [4, 96, 96, 1];

  it('leaves the main thread free while a batch runs', async () => {
    const runner = await WorkerRunner.open({ model, device: 'cpu', threads: 1 });
    try {
      let ticks = 0;
      const timer = setInterval(() => ticks++, 1);
      const started = performance.now();
      await runner.run(randomBatch(shape, 1), shape, runner.outputNames[0]);
      const elapsed = performance.now() - started;
      clearInterval(timer);
      // An in-thread session would give no tick at all until the run returns.
      if (elapsed > 20) expect(ticks).toBeGreaterThan(2);
    } finally {
      await runner.release();
    }
  });

  it('rejects every pending batch with a clear error when it dies, and later ones too', async () => {
    const runner = await WorkerRunner.open({ model, device: 'cpu', threads: 1 });
    // The thread dies while idle (stopping one inside a native ONNX Runtime call aborts the process,
    // which is why the engine itself never terminates a busy worker); the batches never get an answer.
    const stopping = runner.worker.terminate();
    const calls = [1, 2, 3].map((seed) => runner.run(randomBatch(shape, seed), shape, runner.outputNames[0]));
    await stopping;
    for (const call of calls) await expect(call).rejects.toThrow(/ONNX Runtime worker exited unexpectedly/);
    await expect(runner.run(randomBatch(shape, 4), shape, runner.outputNames[0])).rejects.toThrow(/exited unexpectedly/);
    await runner.release();
  });

  it('bounds each batch: one past its time limit rejects and the worker closes after it', async () => {
    const runner = await WorkerRunner.open({ model, device: 'cpu', threads: 1 }, { runMs: 1 });
    const exited = new Promise<number>((resolve) => runner.worker.once('exit', resolve));
    await expect(runner.run(randomBatch([8, 128, 128, 1], 1), [8, 128, 128, 1], runner.outputNames[0])).rejects.toThrow(/did not answer .* within 0.001 s/);
    await exited;
    await runner.release();
  });

  it('dispose stops the thread; a model ONNX Runtime cannot open is an error at open time', async () => {
    const runner = await WorkerRunner.open({ model, device: 'cpu', threads: 1 });
    const exited = new Promise<number>((resolve) => runner.worker.once('exit', resolve));
    await runner.release();
    await exited;
    expect(runner.worker.threadId).toBe(-1);
    await expect(WorkerRunner.open({ model: new Uint8Array([1, 2, 3, 4]), device: 'cpu', threads: 1 })).rejects.toThrow(/protobuf|parse|model/i);
  });

  it('process.exit() while a batch runs exits with the code asked for (no abort from the native run)', async () => {
    const dir = await fs.mkdtemp(path.join(tmpdir(), 'blindspot-onnx-worker-'));
    try {
      const modelFile = path.join(dir, 'model.onnx');
      await fs.writeFile(modelFile, model);
      // The compiled session module beside the compiled worker (dist/), as the CLI runs it.
      const session = pathToFileURL(path.join(path.dirname(onnxWorkerFile().pathname), 'onnxWorkerSession.js')).href;
      const script = `
        import { readFileSync } from 'node:fs';
        const { WorkerRunner } = await import(${JSON.stringify(session)});
        const runner = await WorkerRunner.open({ model: readFileSync(${JSON.stringify(modelFile)}), device: 'cpu', threads: 1 });
        const shape = [16, 256, 256, 1];
        void runner.run(new Float32Array(16 * 256 * 256), shape, runner.outputNames[0]).catch(() => undefined);
        setTimeout(() => process.exit(130), 150);`;
      const scriptFile = path.join(dir, 'exit-mid-run.mjs');
      await fs.writeFile(scriptFile, script);
      const child = spawnSync(process.execPath, [scriptFile], { cwd: PACKAGE_ROOT, encoding: 'utf8', timeout: 30_000 });
      expect(child.stderr).not.toMatch(/terminate called/);
      expect(child.stderr).toBe('');
      expect(child.status).toBe(130);
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});
