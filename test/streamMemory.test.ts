/**
 * Peak memory of a streaming denoise is set by --max-memory, not by the volume: in child processes
 * (test/fixtures/stream-child.ts) with a small model and one bound, a volume and one 4x larger (its
 * float32 values alone exceed the bound) both peak under the bound, within 10% of each other.
 */
import { spawn } from 'node:child_process';
import { rmSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, expect, test } from 'vitest';
import type { ChildArgs } from './fixtures/stream-child.js';
import { prepareStreamChild } from './fixtures/compileFixture.js';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
let script = '';
let tmp = '';
let cleanUp = (): void => undefined;

beforeAll(() => {
  ({ script, tmp, cleanUp } = prepareStreamChild(repoRoot, 'memory'));
});
afterAll(() => cleanUp());

interface ChildResult {
  peakRssBytes: number;
  seconds: number;
  chunksWritten: number;
  memory: { totalBytes: number; coreShape: number[]; cacheBytes: number };
  cache: { misses: number; peakBytes: number };
}

function runChild(args: ChildArgs): Promise<ChildResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [script, JSON.stringify(args)], { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('exit', (code) => {
      if (code !== 0) return reject(new Error(`child failed (${code}): ${stderr}`));
      const last = stdout.trim().split('\n').at(-1)!;
      resolve(JSON.parse(last) as ChildResult);
    });
  });
}

const MiB = 2 ** 20;

test('peak RSS stays under --max-memory and does not grow with the volume', async () => {
  const maxMemory = 320 * MiB;
  const common = {
    inputChunks: [256, 256],
    outputChunks: [512, 512],
    // No pooling, so no skip concatenation (slow on wasm): the property, not the model, is under test.
    network: { dims: 2 as const, depth: 0, filters: 2, kernelSize: 3, batchNorm: false, variant: 'n2v' as const },
    seed: 1,
    maxMemory,
    backend: 'wasm' as const,
  };
  const small = await runChild({ ...common, shape: [4608, 4608], out: path.join(tmp, 'small') });
  rmSync(path.join(tmp, 'small'), { recursive: true, force: true });
  const large = await runChild({ ...common, shape: [9216, 9216], out: path.join(tmp, 'large') });
  rmSync(path.join(tmp, 'large'), { recursive: true, force: true });
  const largeVolumeBytes = 9216 * 9216 * 4;
  console.log(
    `--max-memory ${maxMemory / MiB} MiB (plan ${(large.memory.totalBytes / MiB).toFixed(0)} MiB, core ${large.memory.coreShape.join('x')}, cache ${(large.memory.cacheBytes / MiB).toFixed(0)} MiB): ` +
      `peak RSS ${(small.peakRssBytes / MiB).toFixed(0)} MiB for ${((4608 * 4608 * 4) / MiB).toFixed(0)} MiB of float32 in ${small.seconds.toFixed(1)} s, ` +
      `${(large.peakRssBytes / MiB).toFixed(0)} MiB for ${(largeVolumeBytes / MiB).toFixed(0)} MiB in ${large.seconds.toFixed(1)} s`,
  );
  expect(largeVolumeBytes).toBeGreaterThan(maxMemory);
  expect(large.chunksWritten).toBe(4 * small.chunksWritten);
  expect(small.peakRssBytes).toBeLessThan(maxMemory);
  expect(large.peakRssBytes).toBeLessThan(maxMemory);
  expect(Math.abs(large.peakRssBytes - small.peakRssBytes) / small.peakRssBytes).toBeLessThan(0.1);
}, 180_000);
