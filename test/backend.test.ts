import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import * as tf from '@tensorflow/tfjs-core';
import * as tfWasm from '@tensorflow/tfjs-backend-wasm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BackendUnavailableError, initBackend } from '../backend/select.js';
import { WASM_BACKEND_VERSION } from '../backend/wasm-threads.js';
import type { ChildReport } from './fixtures/backend-child.js';
import { compileFixture } from './fixtures/compileFixture.js';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const requireFromHere = createRequire(import.meta.url);
const isInstalled = (pkg: string): boolean => {
  try {
    requireFromHere.resolve(`${pkg}/package.json`);
    return true;
  } catch {
    return false;
  }
};
const originalCpus = os.cpus;
const originalAvailableParallelism = os.availableParallelism;
const tfNodeInstalled = isInstalled('@tensorflow/tfjs-node');
const tfNodeGpuInstalled = isInstalled('@tensorflow/tfjs-node-gpu');

describe('initBackend in this process', () => {
  it.skipIf(tfNodeInstalled)("explicit 'tensorflow' fails with an error naming the missing package", async () => {
    const attempt = initBackend({ backend: 'tensorflow' });
    await expect(attempt).rejects.toBeInstanceOf(BackendUnavailableError);
    await expect(attempt).rejects.toThrow(/'tensorflow'.*@tensorflow\/tfjs-node is not installed/);
  });

  it.skipIf(tfNodeGpuInstalled)("explicit 'tensorflow-gpu' fails with an error naming the missing package", async () => {
    await expect(initBackend({ backend: 'tensorflow-gpu' })).rejects.toThrow(/@tensorflow\/tfjs-node-gpu is not installed/);
    // Not a dependency (npm ci never downloads libtensorflow): the message says how to add it, at the tfjs-core version.
    await expect(initBackend({ backend: 'tensorflow-gpu' })).rejects.toThrow(new RegExp(`npm install @tensorflow/tfjs-node-gpu@${tf.version_core.replace(/\./g, '\\.')}`));
  });

  it('rejects a thread count that is not a non-negative integer', async () => {
    await expect(initBackend({ backend: 'wasm', threads: 1.5 })).rejects.toThrow(/threads must be/);
    await expect(initBackend({ backend: 'wasm', threads: -2 })).rejects.toThrow(/threads must be/);
  });

  // 3 threads on a 2-core machine: without the cap workaround tfjs would give cores / 2.
  it("'wasm' starts the threaded SIMD build with the requested threads", async () => {
    const info = await initBackend({ backend: 'wasm', threads: 3 });
    expect(info).toMatchObject({ name: 'wasm', tfBackend: 'wasm', threads: 3, simd: true });
    expect(info.detail).toMatch(/threaded SIMD build/);
    expect(tf.getBackend()).toBe('wasm');
    expect(tfWasm.getThreadsCount()).toBe(3);
    expect(tfWasm.version_wasm).toBe(WASM_BACKEND_VERSION);
    // The training kernels were installed for wasm.
    expect(tf.getKernel('Conv2DBackpropFilter', 'wasm')).toBeDefined();
  });

  it('leaves no trace of the start-up shims in globals', () => {
    expect((globalThis as { Worker?: unknown }).Worker).toBeUndefined();
    expect(os.cpus).toBe(originalCpus);
    expect(os.availableParallelism).toBe(originalAvailableParallelism);
  });

  it('computes a conv2d on wasm equal to the cpu backend', async () => {
    const x = tf.tidy(() => tf.sin(tf.div(tf.reshape(tf.range(0, 2 * 9 * 7 * 3), [2, 9, 7, 3]), 50))) as tf.Tensor4D;
    const w = tf.tidy(() => tf.cos(tf.div(tf.reshape(tf.range(0, 3 * 3 * 3 * 5), [3, 3, 3, 5]), 20))) as tf.Tensor4D;
    const onWasm = tf.conv2d(x, w, 1, 'same');
    const wasmValues = await onWasm.data();
    const xValues = await x.data();
    const wValues = await w.data();
    tf.dispose([x, w, onWasm]);
    // Reference on cpu, then back to wasm.
    await tf.setBackend('cpu');
    const reference = tf.tidy(() => tf.conv2d(tf.tensor4d(xValues, [2, 9, 7, 3]), tf.tensor4d(wValues, [3, 3, 3, 5]), 1, 'same').dataSync());
    await tf.setBackend('wasm');
    expect(wasmValues.length).toBe(reference.length);
    for (let i = 0; i < reference.length; i++) expect(wasmValues[i]).toBeCloseTo(reference[i], 4);
  });

  it('is idempotent, and refuses to switch to another backend or thread count', async () => {
    const first = await initBackend({ backend: 'wasm', threads: 3 });
    expect(await initBackend({ backend: 'wasm', threads: 3 })).toEqual(first);
    expect(await initBackend({ backend: 'auto' })).toEqual(first);
    expect(await initBackend({})).toEqual(first);
    await expect(initBackend({ backend: 'cpu' })).rejects.toThrow(/already wasm with 3 thread\(s\)/);
    await expect(initBackend({ backend: 'wasm', threads: 1 })).rejects.toThrow(/already wasm/);
  });
});

/**
 * One backend per process, so thread counts are compared in child processes running
 * test/fixtures/backend-child.ts, compiled with the project's tsconfig into a private folder.
 */
describe('wasm threads in child processes', () => {
  let buildDir = '';
  let childScript = '';
  const runChild = async (backend: string, threads: number, nodeFlags: string[] = []): Promise<{ report: ChildReport; outputs: Float32Array }> => {
    const resultsFile = path.join(buildDir, `outputs-${backend}-${threads}-${nodeFlags.length}.f32`);
    const { stdout } = await promisify(execFile)(process.execPath, [...nodeFlags, childScript, backend, String(threads), resultsFile], {
      cwd: repoRoot,
      // A child that does not exit by itself (a pthread worker holding the event loop) fails here.
      timeout: 60_000,
    });
    const bytes = readFileSync(resultsFile);
    return { report: JSON.parse(stdout) as ChildReport, outputs: new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4) };
  };

  let one: { report: ChildReport; outputs: Float32Array };
  let two: { report: ChildReport; outputs: Float32Array };

  beforeAll(async () => {
    mkdirSync(path.join(repoRoot, 'dist'), { recursive: true });
    buildDir = mkdtempSync(path.join(repoRoot, 'dist', '.backend-test-'));
    childScript = compileFixture(repoRoot, path.join(repoRoot, 'test', 'fixtures', 'backend-child.ts'), buildDir);
    // One after the other: concurrent children would share the cores they are measuring.
    one = await runChild('wasm', 1);
    two = await runChild('wasm', 2);
  });

  afterAll(() => {
    if (buildDir !== '') rmSync(buildDir, { recursive: true, force: true });
  });

  it('one thread uses the single-threaded build', () => {
    expect(one.report.info).toMatchObject({ name: 'wasm', threads: 1, simd: true });
    expect(one.report.wasmThreadsCount).toBe(1);
  });

  it('two threads are reached on any machine (threads workarounds still apply to tfjs-backend-wasm ' + WASM_BACKEND_VERSION + ')', () => {
    expect(two.report.info.detail).toMatch(/threaded SIMD build, 2 threads/);
    expect(two.report.info.threads).toBe(2);
    expect(two.report.wasmThreadsCount).toBe(2);
  });

  it.skipIf(process.platform !== 'linux')('two threads split the work between two OS threads', (context) => {
    const split = (report: ChildReport): number => (report.otherThreadsCpuMs?.[0] ?? 0) / (report.mainThreadCpuMs ?? Number.NaN);
    context.annotate(
      `1 thread: conv2d ${one.report.conv2dMs.toFixed(0)} ms, matMul ${one.report.matMulMs.toFixed(0)} ms, cpu/wall ${one.report.cpuPerWall.toFixed(2)}; ` +
        `2 threads: conv2d ${two.report.conv2dMs.toFixed(0)} ms, matMul ${two.report.matMulMs.toFixed(0)} ms, cpu/wall ${two.report.cpuPerWall.toFixed(2)}; ` +
        `busiest other thread / main thread CPU: ${split(one.report).toFixed(2)} vs ${split(two.report).toFixed(2)}`,
    );
    // CPU time per thread does not depend on other load on the machine, unlike wall time.
    expect(split(one.report)).toBeLessThan(0.2);
    expect(split(two.report)).toBeGreaterThan(0.4);
  });

  it('threaded results equal single-threaded results', () => {
    expect(two.outputs.length).toBe(one.outputs.length);
    let scale = 0;
    let maxDiff = 0;
    for (let i = 0; i < one.outputs.length; i++) {
      scale = Math.max(scale, Math.abs(one.outputs[i]));
      maxDiff = Math.max(maxDiff, Math.abs(one.outputs[i] - two.outputs[i]));
    }
    expect(scale).toBeGreaterThan(1);
    expect(maxDiff).toBeLessThanOrEqual(1e-5 * scale);
  });

  it('falls back to one thread, saying why, when the pthread workers cannot start', async () => {
    // The worker script loads the emscripten factory with eval(), which this flag forbids (in workers too).
    const broken = await runChild('wasm', 2, ['--disallow-code-generation-from-strings']);
    expect(broken.report.info).toMatchObject({ name: 'wasm', threads: 1 });
    expect(broken.report.info.detail).toMatch(/single-threaded SIMD build: threaded build failed to start: .*[Cc]ode generation from strings/);
    expect(broken.outputs).toEqual(one.outputs);
  });

  it("'auto' picks wasm with all cores when tfjs-node is not installed", async () => {
    const auto = await runChild('auto', 0);
    if (auto.report.info.name === 'webgpu') {
      // A machine with a GPU Dawn can drive: auto never takes a software adapter.
      expect(auto.report.info.gpu).toBe(true);
    } else if (tfNodeInstalled || tfNodeGpuInstalled) {
      expect(auto.report.info.name).toMatch(/^tensorflow/);
    } else {
      expect(auto.report.info).toMatchObject({ name: 'wasm', gpu: false, threads: Math.min(os.availableParallelism(), 8) });
      // The missing optional packages are listed for --verbose, not in the one-line detail.
      expect(auto.report.info.detail).not.toMatch(/not installed/);
      expect(auto.report.info.skipped?.join('\n')).toMatch(/@tensorflow\/tfjs-node-gpu is not installed/);
      expect(auto.report.info.skipped?.some((reason) => /webgpu|Dawn|adapter|Vulkan/.test(reason))).toBe(true);
    }
  });
});

