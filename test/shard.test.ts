/**
 * Archive scale (issue 6): sharded denoising as separate `blindspot` processes, on local disk and on
 * S3 (a real Swift on loopback), equal byte for byte to one process; a killed shard rerun; SIGTERM
 * mid-run; `blindspot plan` and `--dry-run`.
 */
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { spawn, spawnSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { Rng } from '../core/rng.js';
import { PACKAGE_ROOT } from '../core/version.js';
import { defaultUNetConfig, type UNetConfig } from '../models/unet.js';
import { SWIFT_MISSING_MESSAGE, startLocalS3, swiftAvailable, type LocalS3 } from '../infra/localS3.js';
import { chunkGrid } from '../storage/chunked.js';
import { createOmeZarr } from '../storage/ome.js';
import { openByteStore, openChunkedSource } from '../storage/open.js';
import type { S3Settings } from '../storage/s3.js';
import { resolveShard, shardBlockRange } from '../pipeline/shard.js';
import { withoutRunOptions } from '../cli/options.js';
import { ExitCode } from '../core/errors.js';
import { saveUntrainedModel } from './fixtures/untrainedModel.js';

// The CLI runs from dist/, which `npm test` builds first (pretest).
const CLI = path.join(PACKAGE_ROOT, 'dist', 'cli', 'main.js');
const shape = [192, 256];
const inputChunks = [32, 32];
const outputChunks = ['--output-chunks', '32x32'];
const cfg: UNetConfig = { ...defaultUNetConfig(2), filters: 4 };
const normalisation = { mode: 'meanstd' as const, offset: 100, scale: 20 };
let tmp = '';
let modelDir = '';
const inputPath = (): string => path.join(tmp, 'in.zarr');

async function writeInput(url: string, settings?: S3Settings): Promise<void> {
  const writer = await createOmeZarr(url, {
    shape,
    chunks: inputChunks,
    dtype: 'float32',
    axes: [{ name: 'y', type: 'space' }, { name: 'x', type: 'space' }],
    placement: { scale: [1, 1], translation: [0, 0] },
    maxLevels: 1,
    s3: settings,
  });
  const rng = new Rng(3);
  const grid = chunkGrid(writer.info);
  for (let y = 0; y < grid[0]; y++) for (let x = 0; x < grid[1]; x++) await writer.writeChunk([y, x], Float32Array.from({ length: 32 * 32 }, () => 100 + 20 * rng.normal()));
}

/** Every stored object of an output except the run bookkeeping, key -> bytes. */
async function storedObjects(url: string, settings?: S3Settings): Promise<Map<string, Buffer>> {
  const store = openByteStore(url, settings);
  const objects = new Map<string, Buffer>();
  try {
    for await (const key of store.list('/')) {
      if (key.startsWith('/.blindspot-denoise/')) continue;
      objects.set(key, Buffer.from((await store.get(key)) as Uint8Array));
    }
  } finally {
    await store.close?.();
  }
  return objects;
}

function expectSameObjects(actual: Map<string, Buffer>, expected: Map<string, Buffer>): void {
  expect([...actual.keys()].sort()).toEqual([...expected.keys()].sort());
  for (const [key, bytes] of expected) expect(Buffer.compare(actual.get(key) as Buffer, bytes), key).toBe(0);
}

interface Finished {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  seconds: number;
}

/**
 * Starts `blindspot <args>` in the folder `tmp/<dir>` (made if missing); `onLine` sees each stdout JSON
 * line (and may kill the child). Runs to compare write `out.zarr` each in its own folder: the recorded
 * command (provenance) names the output, and one output is what shards and a single run share.
 */
async function startCli(
  dir: string,
  args: string[],
  env: NodeJS.ProcessEnv = {},
  onLine?: (event: Record<string, unknown>, kill: (sig: NodeJS.Signals) => void) => void,
): Promise<Finished> {
  const t0 = performance.now();
  const cwd = path.join(tmp, dir);
  await fs.mkdir(cwd, { recursive: true });
  const child = spawn(process.execPath, [CLI, ...args, '--backend', 'cpu', '--json'], { cwd, env: { ...process.env, ...env } });
  let stdout = '';
  let stderr = '';
  let pending = '';
  child.stdout.on('data', (d: Buffer) => {
    stdout += d.toString();
    pending += d.toString();
    let newline: number;
    while ((newline = pending.indexOf('\n')) >= 0) {
      const line = pending.slice(0, newline);
      pending = pending.slice(newline + 1);
      if (!onLine || !line.startsWith('{')) continue;
      onLine(JSON.parse(line) as Record<string, unknown>, (sig) => child.kill(sig));
    }
  });
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  return await new Promise((resolve) => child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr, seconds: (performance.now() - t0) / 1000 })));
}

function events(stdout: string, type: string): Array<Record<string, unknown>> {
  return stdout
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>)
    .filter((e) => e.type === type);
}

beforeAll(async () => {
  await tf.setBackend('cpu');
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'blindspot-shard-'));
  modelDir = path.join(tmp, 'model');
  await saveUntrainedModel(modelDir, cfg, normalisation, 2);
  await writeInput(path.join(tmp, 'in.zarr'));
}, 60_000);

afterAll(async () => {
  if (tmp) await fs.rm(tmp, { recursive: true, force: true });
});

describe('shard arithmetic and options', () => {
  test('shards cover every block exactly once, balanced to one block', () => {
    for (const blocks of [0, 1, 2, 7, 48, 1000, 12345]) {
      for (const count of [1, 2, 3, 5, 16, 100]) {
        let next = 0;
        const sizes: number[] = [];
        for (let index = 0; index < count; index++) {
          const { start, end } = shardBlockRange(blocks, { index, count });
          expect(start).toBe(next);
          sizes.push(end - start);
          next = end;
        }
        expect(next).toBe(blocks);
        expect(Math.max(...sizes) - Math.min(...sizes)).toBeLessThanOrEqual(1);
      }
    }
  });

  test('--shard i/N, or --shard-count N with the index from Kubernetes or AWS Batch', () => {
    expect(resolveShard({})).toBeUndefined();
    expect(resolveShard({ shard: '2/5' })).toEqual({ index: 2, count: 5 });
    expect(resolveShard({ shardCount: '4' }, { JOB_COMPLETION_INDEX: '3' })).toEqual({ index: 3, count: 4 });
    expect(resolveShard({ shardCount: '4' }, { AWS_BATCH_JOB_ARRAY_INDEX: '1' })).toEqual({ index: 1, count: 4 });
    expect(() => resolveShard({ shard: '5/5' })).toThrow(/out of range/);
    expect(() => resolveShard({ shard: '1-of-3' })).toThrow(/i\/N/);
    expect(() => resolveShard({ shardCount: '4' }, {})).toThrow(/JOB_COMPLETION_INDEX/);
    expect(() => resolveShard({ shardCount: '0' }, { JOB_COMPLETION_INDEX: '0' })).toThrow(/positive/);
    expect(() => resolveShard({ shard: '0/2', shardCount: '2' })).toThrow(/not both/);
  });

  test('provenance leaves out how a run goes (resume, shard, grace, json, threads), keeps what it makes', () => {
    expect(withoutRunOptions(['m', 'in.zarr', '--out', 'o.zarr', '--shard', '1/3', '--resume', '--grace-seconds=10', '--json', '--threads', '2', '--tta'])).toEqual([
      'm',
      'in.zarr',
      '--out',
      'o.zarr',
      '--tta',
    ]);
  });
});

describe('sharded denoise on local disk (separate processes)', () => {
  let reference = new Map<string, Buffer>();

  beforeAll(async () => {
    const one = await startCli('one', ['denoise', modelDir, inputPath(), '--out', 'out.zarr', ...outputChunks]);
    expect(one.stderr).not.toMatch(/unexpected error/);
    expect(one.code).toBe(0);
    reference = await storedObjects(path.join(tmp, 'one', 'out.zarr'));
  }, 120_000);

  test('3 shards started at the same moment write exactly the one-process output', async () => {
    const runs = await Promise.all([0, 1, 2].map((i) => startCli('three', ['denoise', modelDir, inputPath(), '--out', 'out.zarr', ...outputChunks, '--shard', `${i}/3`])));
    for (const run of runs) {
      expect(run.stderr).not.toMatch(/unexpected error/);
      expect(run.code).toBe(0);
    }
    // Disjoint blocks, together all of them: every chunk event of every shard, no block twice.
    const blocks = runs.flatMap((r) => events(r.stdout, 'chunk').map((e) => (e.index as number[]).join('.')));
    expect(new Set(blocks).size).toBe(blocks.length);
    expect(blocks.length).toBe((shape[0] / 32) * (shape[1] / 32));
    expect(runs.some((r) => events(r.stdout, 'done')[0]?.allComplete === true)).toBe(true);
    expectSameObjects(await storedObjects(path.join(tmp, 'three', 'out.zarr')), reference);
    // The pyramid was built: level 1 exists.
    expect([...reference.keys()].some((k) => k.startsWith('/1/c/'))).toBe(true);
  }, 180_000);

  test('shards of a different count, or an unsharded rerun, are refused while shards own the output', async () => {
    const partial = path.join(tmp, 'partial', 'out.zarr');
    const first = await startCli('partial', ['denoise', modelDir, inputPath(), '--out', 'out.zarr', ...outputChunks, '--shard', '0/2']);
    expect(first.code).toBe(0);
    expect(events(first.stdout, 'done')[0]?.allComplete).toBe(false);
    const other = await startCli('partial', ['denoise', modelDir, inputPath(), '--out', 'out.zarr', ...outputChunks, '--shard', '0/3']);
    expect(other.code).toBe(ExitCode.output);
    expect(other.stderr).toMatch(/2 shards/);
    const unsharded = await startCli('partial', ['denoise', modelDir, inputPath(), '--out', 'out.zarr', ...outputChunks, '--resume']);
    expect(unsharded.code).toBe(ExitCode.output);
    expect(unsharded.stderr).toContain('out.zarr');
    const second = await startCli('partial', ['denoise', modelDir, inputPath(), '--out', 'out.zarr', ...outputChunks, '--shard-count', '2'], { JOB_COMPLETION_INDEX: '1' });
    expect(second.code).toBe(0);
    expect(events(second.stdout, 'done')[0]?.allComplete).toBe(true);
    expectSameObjects(await storedObjects(partial), reference);
  }, 180_000);

  test('SIGTERM mid-run: exits 130 within the grace bound, no torn chunk, a resumed run completes it', async () => {
    const out = path.join(tmp, 'term', 'out.zarr');
    let signalledAt = 0;
    const run = await startCli('term', ['denoise', modelDir, inputPath(), '--out', 'out.zarr', ...outputChunks, '--grace-seconds', '20'], {}, (e, kill) => {
      if (e.type === 'chunk' && e.done === 3) {
        signalledAt = performance.now();
        kill('SIGTERM');
      }
    });
    expect(run.code).toBe(ExitCode.interrupted);
    expect(events(run.stdout, 'shutdown')[0]?.signal).toBe('SIGTERM');
    expect((performance.now() - signalledAt) / 1000).toBeLessThan(20);
    const written = events(run.stdout, 'chunk').length;
    expect(written).toBeLessThan((shape[0] / 32) * (shape[1] / 32));
    // Marked incomplete (a reader refuses it as a result); every stored chunk decodes (atomic writes), and no temp file is left.
    await expect(openChunkedSource(out)).rejects.toThrow(/incomplete.*--resume/);
    const reader = await openChunkedSource(out, { arrayPath: '0' });
    const grid = chunkGrid(reader.info);
    for (let y = 0; y < grid[0]; y++) for (let x = 0; x < grid[1]; x++) await reader.readChunk([y, x]);
    await reader.close?.();
    const files = (await fs.readdir(out, { recursive: true })).map(String);
    expect(files.filter((f) => path.basename(f).includes('.tmp-'))).toEqual([]);
    const resumed = await startCli('term', ['denoise', modelDir, inputPath(), '--out', 'out.zarr', ...outputChunks, '--resume']);
    expect(resumed.code).toBe(0);
    expect(events(resumed.stdout, 'chunk').length).toBe((shape[0] / 32) * (shape[1] / 32) - written);
    expectSameObjects(await storedObjects(out), reference);
  }, 180_000);

  test('--dry-run writes nothing and reports the blocks; plan measures a per-block cost and suggests a shard count', async () => {
    const dry = await startCli('dry', ['denoise', modelDir, inputPath(), '--out', 'out.zarr', ...outputChunks, '--dry-run', '--shard', '1/4']);
    expect(dry.code).toBe(0);
    const plan = events(dry.stdout, 'plan')[0] as { blocks: number; blockShape: number[]; shard: { blockStart: number; blockEnd: number } };
    expect(plan.blocks).toBe(48);
    expect(plan.blockShape).toEqual([32, 32]);
    expect(plan.shard).toMatchObject({ blockStart: 12, blockEnd: 24 });
    expect(await fs.readdir(path.join(tmp, 'dry'))).toEqual([]);

    const measured = await startCli('plan', ['plan', inputPath(), '--model', modelDir, '--max-memory', '256MiB', '--target', '2s', '--sample-blocks', '2']);
    expect(measured.stderr).not.toMatch(/unexpected error/);
    expect(measured.code).toBe(0);
    const report = events(measured.stdout, 'plan')[0] as { blocks: number; blockShape: number[]; cost: { secondsPerBlock: number; totalSeconds: number; suggestedShards: number; sampledBlocks: number } };
    const blocks = Math.ceil(shape[0] / report.blockShape[0]) * Math.ceil(shape[1] / report.blockShape[1]);
    expect(report.blocks).toBe(blocks);
    // One contiguous run of about 2 blocks from the middle (a shard of the plan's blocks).
    const runs = Math.max(1, Math.floor(blocks / Math.min(2, blocks)));
    const timed = shardBlockRange(blocks, { index: Math.floor(runs / 2), count: runs });
    expect(report.cost.sampledBlocks).toBe(timed.end - timed.start);
    expect(report.cost.secondsPerBlock).toBeGreaterThan(0);
    expect(report.cost.totalSeconds).toBeCloseTo(report.cost.secondsPerBlock * blocks, 6);
    expect(report.cost.suggestedShards).toBe(Math.min(blocks, Math.max(1, Math.ceil(report.cost.totalSeconds / 2))));
    // Planning writes nothing next to the input.
    expect(await fs.readdir(path.join(tmp, 'plan'))).toEqual([]);
  }, 180_000);
});

if (!swiftAvailable()) console.log(`shard (S3 part): skipped: ${SWIFT_MISSING_MESSAGE}`);

describe.skipIf(!swiftAvailable())('sharded denoise on S3 (local Swift, separate processes)', () => {
  let s3: LocalS3;
  let env: NodeJS.ProcessEnv = {};

  beforeAll(async () => {
    s3 = await startLocalS3({ buckets: ['archive'], exportCredentials: true });
    env = { AWS_ACCESS_KEY_ID: s3.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.secretAccessKey, AWS_REGION: s3.region };
    await writeInput('s3://archive/raw/in.zarr', { endpoint: s3.endpoint, region: s3.region });
  }, 120_000);

  afterAll(async () => {
    await s3?.stop();
  });

  test('3 shards -> byte-identical to one run; one killed mid-run and rerun -> complete and identical', async () => {
    const settings = { endpoint: s3.endpoint, region: s3.region };
    const out = 's3://archive/denoised/out.zarr';
    const denoiseArgs = ['denoise', modelDir, 's3://archive/raw/in.zarr', '--out', out, '--s3-endpoint', s3.endpoint, ...outputChunks];
    /** Removes the output, so each run writes the same URL afresh (the URL is part of the recorded command). */
    const clearOutput = async (): Promise<void> => {
      const store = openByteStore(out, settings);
      const keys: string[] = [];
      for await (const key of store.list('/')) keys.push(key);
      for (const key of keys) await store.delete(key);
      await store.close?.();
    };
    const one = await startCli('s3-one', denoiseArgs, env);
    expect(one.stderr).not.toMatch(/unexpected error/);
    expect(one.code).toBe(0);
    const reference = await storedObjects(out, settings);
    expect(reference.size).toBeGreaterThan(48);

    await clearOutput();
    const three = await Promise.all([0, 1, 2].map((i) => startCli(`s3-three-${i}`, [...denoiseArgs, '--shard', `${i}/3`], env)));
    for (const run of three) expect(run.code).toBe(0);
    expectSameObjects(await storedObjects(out, settings), reference);

    // Shard 1 is killed (SIGKILL: no clean-up at all) after its 4th block; the others finish.
    await clearOutput();
    const runs = await Promise.all(
      [0, 1, 2].map((i) =>
        startCli(`s3-killed-${i}`, [...denoiseArgs, '--shard-count', '3'], { ...env, AWS_BATCH_JOB_ARRAY_INDEX: String(i) }, (e, kill) => {
          if (i === 1 && e.type === 'chunk' && e.done === 4) kill('SIGKILL');
        }),
      ),
    );
    expect(runs[1].signal).toBe('SIGKILL');
    expect(runs[0].code).toBe(0);
    expect(runs[2].code).toBe(0);
    // Not complete yet: no pyramid above level 0.
    expect([...(await storedObjects(out, settings)).keys()].some((k) => k.startsWith('/1/c/'))).toBe(false);
    const rerun = await startCli('s3-rerun', [...denoiseArgs, '--shard-count', '3'], { ...env, AWS_BATCH_JOB_ARRAY_INDEX: '1' });
    expect(rerun.stderr).not.toMatch(/unexpected error/);
    expect(rerun.code).toBe(0);
    // The rerun verifies what the killed shard journaled and computes exactly the rest of its 16 blocks
    // (chunks stored after the last journal flush are recomputed: same bytes, written atomically).
    const verified = events(rerun.stdout, 'stream-verified')[0] as { verified: number } | undefined;
    expect(events(rerun.stdout, 'chunk').length + (verified?.verified ?? 0)).toBe(16);
    expect(events(rerun.stdout, 'done')[0]?.allComplete).toBe(true);
    expectSameObjects(await storedObjects(out, settings), reference);
  }, 300_000);
});
