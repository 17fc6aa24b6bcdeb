/**
 * Watch mode with real processes and real files: a writer process drops frames into a watched
 * folder while `blindspot watch` (cli/watch.ts through test/fixtures/watch-cli.ts, compiled into a
 * private folder) denoises them. Outputs are compared with denoiseVolume of the complete inputs, so
 * an output made from a partial file fails the test. Then: SIGKILL and restart, SIGTERM with an
 * item in flight, and (in process) Zarr items, time points of a growing OME-Zarr, the queue bound,
 * --dry-run and the state.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import type * as tfl from '@tensorflow/tfjs-layers';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { ExitCode } from '../core/errors.js';
import { Rng } from '../core/rng.js';
import type { Volume } from '../core/volume.js';
import { loadModelFolder, type ModelManifest } from '../models/io.js';
import type { UNetConfig } from '../models/unet.js';
import { denoiseVolume } from '../pipeline/denoise.js';
import { denoiseUrl, parseByteSize } from '../pipeline/streamDenoise.js';
import { WATCH_STATE_KEY, readWatchState, watch, type WatchEvent, type WatchState } from '../pipeline/watch.js';
import { chunkGrid } from '../storage/chunked.js';
import { FileSystemStore } from '../storage/fsStore.js';
import { readImage, writeImage } from '../storage/index.js';
import { openChunkedSource } from '../storage/open.js';
import { arrayMetadata, createZarrArray, encodeJson } from '../storage/zarr.js';
import { S3Store, type S3Settings } from '../storage/s3.js';
import { SWIFT_MISSING_MESSAGE, startLocalS3, swiftAvailable, type LocalS3 } from '../infra/localS3.js';
import { compileFixture } from './fixtures/compileFixture.js';
import { saveUntrainedModel } from './fixtures/untrainedModel.js';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const cfg: UNetConfig = { dims: 2, depth: 2, filters: 4, kernelSize: 3, batchNorm: true, variant: 'n2v' };
const normalisation = { mode: 'meanstd' as const, offset: 100, scale: 20 };
const SETTLE_MS = 500;
const POLL_MS = 100;

let script = '';
let buildDir = '';
let tmp = '';
let modelDir = '';
let model: tfl.LayersModel;
let manifest: ModelManifest;

beforeAll(async () => {
  await tf.setBackend('cpu');
  mkdirSync(path.join(repoRoot, 'dist'), { recursive: true });
  buildDir = mkdtempSync(path.join(repoRoot, 'dist', '.watch-'));
  script = compileFixture(repoRoot, path.join(repoRoot, 'test', 'fixtures', 'watch-cli.ts'), buildDir);
  tmp = mkdtempSync(path.join(os.tmpdir(), 'blindspot-watch-'));
  modelDir = path.join(tmp, 'model');
  await saveUntrainedModel(modelDir, cfg, normalisation, 4);
  ({ model, manifest } = await loadModelFolder(modelDir));
}, 120_000);

afterAll(() => {
  model?.dispose();
  if (buildDir) rmSync(buildDir, { recursive: true, force: true });
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

type Event = WatchEvent & { time: string };

/** `blindspot watch` in a child process, its JSON-line events collected as they come. */
class Watcher {
  readonly child: ChildProcess;
  readonly events: Event[] = [];
  stderr = '';
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>;
  private waiters: Array<() => void> = [];

  constructor(args: string[]) {
    this.child = spawn(process.execPath, [script, ...args, '--json', '--backend', 'cpu', '--settle-ms', String(SETTLE_MS), '--poll-ms', String(POLL_MS)], {
      cwd: tmp,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let buffered = '';
    this.child.stdout!.on('data', (data: Buffer) => {
      buffered += data.toString();
      let newline: number;
      while ((newline = buffered.indexOf('\n')) >= 0) {
        const line = buffered.slice(0, newline);
        buffered = buffered.slice(newline + 1);
        if (line.trim()) this.events.push(JSON.parse(line) as Event);
      }
      for (const w of this.waiters) w();
    });
    this.child.stderr!.on('data', (data: Buffer) => (this.stderr += data.toString()));
    this.exited = new Promise((resolve) => this.child.on('exit', (code, signal) => resolve({ code, signal, at: Date.now() })));
  }

  of<T extends Event['type']>(type: T): Extract<Event, { type: T }>[] {
    return this.events.filter((e): e is Extract<Event, { type: T }> => e.type === type);
  }

  /** Resolves once `predicate` holds on the events seen so far; rejects after `timeoutMs` or when the process ends first. */
  until(predicate: () => boolean, timeoutMs = 60_000): Promise<void> {
    return new Promise((resolve, reject) => {
      const check = (): void => {
        if (!predicate()) return;
        cleanup();
        resolve();
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`timed out; events: ${this.events.map((e) => e.type).join(',')}; stderr: ${this.stderr}`));
      }, timeoutMs);
      void this.exited.then(() => setTimeout(() => {
        if (predicate()) return;
        cleanup();
        reject(new Error(`watcher exited first; stderr: ${this.stderr}`));
      }, 50));
      const cleanup = (): void => {
        clearTimeout(timer);
        this.waiters = this.waiters.filter((w) => w !== check);
      };
      this.waiters.push(check);
      check();
    });
  }
}

interface Drop {
  /** Encoded frame (outside the watched folder). */
  src: string;
  dest: string;
  /** Sleep before this drop, ms. */
  delayMs: number;
  /** Written in this many pieces, with this pause between pieces. */
  pieces: number;
  pauseMs: number;
}

const WRITER = `
import { openSync, writeSync, closeSync, readFileSync, mkdirSync } from 'node:fs';
import path from 'node:path';
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const drops = JSON.parse(process.argv[1]);
for (const d of drops) {
  await sleep(d.delayMs);
  const bytes = readFileSync(d.src);
  mkdirSync(path.dirname(d.dest), { recursive: true });
  // Straight under the final name, as an instrument would: the watcher must wait for completeness.
  const fd = openSync(d.dest, 'w');
  const step = Math.ceil(bytes.length / d.pieces);
  for (let i = 0; i < d.pieces; i++) {
    writeSync(fd, bytes, i * step, Math.min(step, bytes.length - i * step));
    if (i < d.pieces - 1) await sleep(d.pauseMs);
  }
  closeSync(fd);
  process.stdout.write(JSON.stringify({ dest: d.dest, completedAt: Date.now() }) + '\\n');
}
`;

/** Runs the writer process; resolves with each drop's completion time (ms since the epoch) by destination. */
function runWriter(drops: Drop[]): Promise<Map<string, number>> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--input-type=module', '-e', WRITER, JSON.stringify(drops)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('exit', (code) => {
      if (code !== 0) return reject(new Error(`writer failed: ${err}`));
      const done = new Map<string, number>();
      for (const line of out.trim().split('\n')) {
        const r = JSON.parse(line) as { dest: string; completedAt: number };
        done.set(r.dest, r.completedAt);
      }
      resolve(done);
    });
  });
}

function frame(shape: [number, number], rng: Rng): Volume {
  return { data: Float32Array.from({ length: shape[0] * shape[1] }, () => Math.max(0, Math.round(100 + 20 * rng.normal()))), shape, sampleType: 'uint16' };
}

/** Encodes `count` frames into `dir` (outside the watched folder); returns their paths. */
async function encodeFrames(dir: string, count: number, shape: [number, number], seed: number): Promise<string[]> {
  await fs.mkdir(dir, { recursive: true });
  const rng = new Rng(seed);
  const files: string[] = [];
  for (let i = 0; i < count; i++) {
    const file = path.join(dir, `frame${String(i).padStart(2, '0')}.tif`);
    await writeImage(file, frame(shape, rng));
    files.push(file);
  }
  return files;
}

/** Largest |output - denoiseVolume(complete input)| relative to the reference's range. */
async function mismatch(input: string, output: string): Promise<number> {
  const reference = await denoiseVolume(model, manifest, await readImage(input));
  const got = await readImage(output);
  expect(got.shape).toEqual(reference.shape);
  let worst = 0;
  let lo = Infinity;
  let hi = -Infinity;
  for (let i = 0; i < reference.data.length; i++) {
    worst = Math.max(worst, Math.abs(got.data[i] - reference.data[i]));
    lo = Math.min(lo, reference.data[i]);
    hi = Math.max(hi, reference.data[i]);
  }
  return worst / Math.max(1e-6, hi - lo);
}

async function readState(out: string): Promise<WatchState> {
  const state = await readWatchState(out);
  if (!state) throw new Error(`${out} has no watch state`);
  return state;
}

/** Files under `dir`, relative, skipping the watch's own folder. */
async function outputsIn(dir: string): Promise<string[]> {
  const all = (await fs.readdir(dir, { recursive: true })).map(String);
  const files: string[] = [];
  for (const f of all) if (!f.startsWith('.blindspot-watch') && (await fs.stat(path.join(dir, f))).isFile()) files.push(f);
  return files.sort();
}

function quantile(values: number[], q: number): number {
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * (s.length - 1)))];
}

describe('blindspot watch (processes)', () => {
  test('20 frames dropped at random intervals, one slow, one stalled, one undecodable: 20 outputs, each once, none partial; SIGTERM exits 130', async () => {
    const input = path.join(tmp, 'in1');
    const out = path.join(tmp, 'out1');
    await fs.mkdir(input);
    const sources = await encodeFrames(path.join(tmp, 'src1'), 20, [32, 36], 7);
    const broken = path.join(tmp, 'src1', 'broken.tif');
    await fs.writeFile(broken, Buffer.from('II*\0this is not a TIFF at all, just text pretending'));
    const rng = new Rng(2024);
    const SLOW = 5;
    const STALLED = 12;
    const drops: Drop[] = sources.map((src, i) => ({
      src,
      dest: path.join(input, i % 2 ? 'sub' : '', path.basename(src)),
      delayMs: Math.floor(rng.uniform() * 200),
      // Pieces with pauses shorter than the settle time: never taken before it is whole.
      pieces: i === SLOW ? 5 : i === STALLED ? 2 : 1,
      // One pause longer than the settle time: taken while partial, fails to decode, is retried.
      pauseMs: i === SLOW ? SETTLE_MS / 4 : i === STALLED ? SETTLE_MS * 2 : 0,
    }));
    drops.splice(9, 0, { src: broken, dest: path.join(input, 'broken.tif'), delayMs: 50, pieces: 1, pauseMs: 0 });

    const watcher = new Watcher([input, '--model', modelDir, '--out', out, '--grace-seconds', '5']);
    await watcher.until(() => watcher.of('watch-start').length === 1);
    const completed = await runWriter(drops);
    await watcher.until(() => watcher.of('item-done').length >= 20 && watcher.of('item-failed').length >= 1);
    // Idle: SIGTERM stops at once with the interrupted code.
    const signalledAt = Date.now();
    watcher.child.kill('SIGTERM');
    const exit = await watcher.exited;
    expect(exit.code).toBe(ExitCode.interrupted);
    expect(exit.at - signalledAt).toBeLessThan(5000);

    const done = watcher.of('item-done');
    const keys = done.map((e) => e.key);
    expect(new Set(keys).size).toBe(keys.length);
    expect(keys.length).toBe(20);
    const expected = drops.filter((d) => d.src !== broken).map((d) => path.relative(input, d.dest).split(path.sep).join('/')).sort();
    expect([...keys].sort()).toEqual(expected);
    expect(await outputsIn(out)).toEqual(expected);

    // None made from a partial file: every output equals the model applied to the complete input.
    for (const d of drops) {
      if (d.src === broken) continue;
      const rel = path.relative(input, d.dest);
      expect(await mismatch(d.src, path.join(out, rel))).toBeLessThan(1e-5);
    }
    const slowKey = path.relative(input, drops.find((d) => d.pieces === 5)!.dest);
    const stalledKey = path.relative(input, drops.find((d) => d.pieces === 2)!.dest);
    const slowDone = done.find((e) => e.key === slowKey)!;
    expect(Date.parse(slowDone.time)).toBeGreaterThanOrEqual(completed.get(path.join(input, slowKey))!);
    // The stalled file was taken while partial, failed to decode, and was tried again rather than failed.
    // (Had its writer stalled past a second settle period, it would be recorded as failed, then redone
    // once it changed: either way it ends done, once.)
    expect(watcher.of('item-retry').some((e) => e.key === stalledKey)).toBe(true);
    expect(done.filter((e) => e.key === stalledKey)).toHaveLength(1);

    const failed = watcher.of('item-failed');
    expect(failed.filter((e) => e.key !== stalledKey).map((e) => e.key)).toEqual(['broken.tif']);
    expect(failed.find((e) => e.key === 'broken.tif')!.error).toMatch(/broken\.tif: cannot be decoded/);

    const state = await readState(out);
    const statuses = Object.entries(state.items).map(([k, v]) => `${k}:${v.status}`).sort();
    expect(statuses).toEqual([...expected.map((k) => `${k}:done`), 'broken.tif:failed'].sort());
    expect(state.items['broken.tif'].error).toMatch(/broken\.tif/);
    expect(await fs.readdir(path.join(out, '.blindspot-watch', 'staging')).catch(() => [])).toEqual([]);

    const latencies = done.map((e) => e.latencySeconds);
    const seconds = done.map((e) => e.seconds);
    console.log(
      `watch latency (arrival -> stored output), 20 frames 32x36, settle ${SETTLE_MS} ms, poll ${POLL_MS} ms, cpu backend: ` +
        `median ${quantile(latencies, 0.5).toFixed(3)} s, max ${quantile(latencies, 1).toFixed(3)} s; processing median ${quantile(seconds, 0.5).toFixed(3)} s`,
    );
    // Arrival -> output is the settle time plus polling plus the queue: bounded, not growing.
    expect(quantile(latencies, 0.5)).toBeGreaterThanOrEqual(SETTLE_MS / 1000 - 0.05);
    expect(quantile(latencies, 0.5)).toBeLessThan(SETTLE_MS / 1000 + 5);
  });

  test('SIGKILL after some items, then a restart: the rest are done, the finished ones are not redone', async () => {
    const input = path.join(tmp, 'in2');
    const out = path.join(tmp, 'out2');
    await fs.mkdir(input);
    const sources = await encodeFrames(path.join(tmp, 'src2'), 12, [48, 48], 8);
    const rng = new Rng(99);
    const drops: Drop[] = sources.map((src) => ({ src, dest: path.join(input, path.basename(src)), delayMs: Math.floor(rng.uniform() * 60), pieces: 1, pauseMs: 0 }));
    await runWriter(drops);

    const first = new Watcher([input, '--model', modelDir, '--out', out]);
    await first.until(() => first.of('item-done').length >= 4);
    first.child.kill('SIGKILL');
    const killed = await first.exited;
    expect(killed.signal).toBe('SIGKILL');
    const doneBefore = first.of('item-done').map((e) => e.key);
    expect(doneBefore.length).toBeLessThan(12);

    const second = new Watcher([input, '--model', modelDir, '--out', out, '--once']);
    const exit = await second.exited;
    expect(exit.code).toBe(ExitCode.ok);
    const doneAfter = second.of('item-done').map((e) => e.key);
    const adopted = second.of('item-adopted').map((e) => e.key);
    expect(doneAfter.filter((k) => doneBefore.includes(k))).toEqual([]);
    expect(adopted.filter((k) => doneBefore.includes(k))).toEqual([]);
    const all = [...doneBefore, ...doneAfter, ...adopted].sort();
    expect(all).toEqual(sources.map((s) => path.basename(s)).sort());
    expect(second.of('watch-start')[0].done).toBeGreaterThanOrEqual(doneBefore.length);

    expect(await outputsIn(out)).toEqual(sources.map((s) => path.basename(s)).sort());
    for (const src of sources) expect(await mismatch(src, path.join(out, path.basename(src)))).toBeLessThan(1e-5);
    const state = await readState(out);
    expect(Object.values(state.items).every((i) => i.status === 'done')).toBe(true);
    expect(Object.keys(state.items)).toHaveLength(12);
    console.log(`watch restart: ${doneBefore.length} done before SIGKILL, ${doneAfter.length} after restart, ${adopted.length} adopted`);
  });

  test('SIGTERM with an item in flight: it finishes, the state is stored, exit 130 within the grace bound; a rerun does the rest', async () => {
    const input = path.join(tmp, 'in3');
    const out = path.join(tmp, 'out3');
    const sources = await encodeFrames(input, 3, [128, 128], 9);
    const grace = 8;
    const watcher = new Watcher([input, '--model', modelDir, '--out', out, '--grace-seconds', String(grace)]);
    await watcher.until(() => watcher.of('item-start').length >= 1);
    const signalledAt = Date.now();
    watcher.child.kill('SIGTERM');
    const exit = await watcher.exited;
    expect(exit.code).toBe(ExitCode.interrupted);
    expect(exit.at - signalledAt).toBeLessThan(grace * 1000);
    const inFlight = watcher.of('item-start')[0].key;
    // Finished, not abandoned: one image takes well under the grace time.
    expect(watcher.of('item-done').map((e) => e.key)).toEqual([inFlight]);
    const state = await readState(out);
    expect(state.items[inFlight].status).toBe('done');
    expect(Object.values(state.items).filter((i) => i.status === 'done')).toHaveLength(1);
    console.log(`watch SIGTERM: exit ${exit.code} after ${((exit.at - signalledAt) / 1000).toFixed(2)} s (grace ${grace} s), in-flight item ${watcher.of('item-done')[0].seconds.toFixed(2)} s`);

    const rerun = new Watcher([input, '--model', modelDir, '--out', out, '--once']);
    expect((await rerun.exited).code).toBe(ExitCode.ok);
    expect(rerun.of('item-done').map((e) => e.key).sort()).toEqual(sources.map((s) => path.basename(s)).filter((k) => k !== inFlight).sort());

    // Usage errors are refused before anything starts.
    const inside = new Watcher([input, '--model', modelDir, '--out', path.join(input, 'denoised')]);
    expect((await inside.exited).code).toBe(ExitCode.output);
    expect(inside.stderr).toMatch(/would overwrite the input/);
    const noModel = new Watcher([input, '--out', out]);
    expect((await noModel.exited).code).toBe(ExitCode.usage);
    expect(noModel.stderr).toMatch(/--model/);
    for (const src of sources) expect(await mismatch(src, path.join(out, path.basename(src)))).toBeLessThan(1e-5);
  });

  test('SIGTERM with a Zarr item in flight past the grace time: abandoned, exit 130 within the bound, state stored; a rerun finishes it', async () => {
    const input = path.join(tmp, 'in9');
    const out = path.join(tmp, 'out9');
    await fs.mkdir(input);
    const rng = new Rng(16);
    const volume = await createZarrArray(new FileSystemStore(path.join(input, 'vol.zarr')), '/', { shape: [192, 192], chunks: [32, 32], dtype: 'float32', zarrVersion: 3, codec: 'none' });
    for (const index of gridOf([192, 192], [32, 32])) await volume.writeChunk(index, Float32Array.from({ length: 1024 }, () => 100 + 20 * rng.normal()));
    // A small memory bound makes small output chunks: the item is many chunks, stoppable between them.
    // The tfjs engine: the item must outlast the grace time, and ONNX Runtime finishes it within it.
    const common = [input, '--model', modelDir, '--out', out, '--max-memory', '200MiB', '--engine', 'tfjs'];
    const grace = 1;
    const watcher = new Watcher([...common, '--grace-seconds', String(grace)]);
    await watcher.until(() => watcher.events.some((e) => e.type === 'stream' && e.event.type === 'stream-start'));
    const signalledAt = Date.now();
    watcher.child.kill('SIGTERM');
    const exit = await watcher.exited;
    expect(exit.code).toBe(ExitCode.interrupted);
    // The bound counts from when the signal is handled, which waits for the tile being computed.
    expect(exit.at - signalledAt).toBeLessThan(grace * 1000 + 1500);
    expect(watcher.of('item-done')).toHaveLength(0);
    expect((await readState(out)).items['vol.zarr'].status).toBe('started');
    console.log(`watch SIGTERM past grace: exit ${exit.code} after ${((exit.at - signalledAt) / 1000).toFixed(2)} s (grace ${grace} s)`);

    const rerun = new Watcher([...common, '--once']);
    expect((await rerun.exited).code).toBe(ExitCode.ok);
    expect(rerun.of('item-done').map((e) => e.key)).toEqual(['vol.zarr']);
    const reference = path.join(tmp, 'ref-vol9.zarr');
    await denoiseUrl({ input: path.join(input, 'vol.zarr'), out: reference, modelDir, maxMemoryBytes: parseByteSize('200MiB'), engine: { engine: 'tfjs' } });
    expect(await readAll(path.join(out, 'vol.zarr'))).toEqual(await readAll(reference));
  });
});

describe('watch (in process)', () => {
  async function runOnce(input: string, out: string, extra: Partial<Parameters<typeof watch>[0]> = {}): Promise<{ events: WatchEvent[]; result: Awaited<ReturnType<typeof watch>> }> {
    const events: WatchEvent[] = [];
    const result = await watch({
      input,
      out,
      modelDir,
      settleMs: 0,
      pollMs: 20,
      once: true,
      ...extra,
      onEvent: (e) => {
        events.push(e);
        extra.onEvent?.(e);
      },
    });
    return { events, result };
  }

  test('a bounded queue: at most --max-queue taken per poll, the rest found again, one warning per episode; --dry-run writes nothing', async () => {
    const input = path.join(tmp, 'in4');
    const out = path.join(tmp, 'out4');
    await encodeFrames(input, 7, [24, 24], 10);
    const dry = await runOnce(input, out, { dryRun: true });
    expect(dry.result.ready).toHaveLength(7);
    expect(dry.events.filter((e) => e.type === 'dry-run-item').every((e) => e.type === 'dry-run-item' && e.status === 'ready')).toBe(true);
    await expect(fs.stat(out)).rejects.toThrow();

    const { events, result } = await runOnce(input, out, { maxQueue: 2 });
    expect(result.processed).toBe(7);
    const maxQueueSeen = Math.max(...events.filter((e) => e.type === 'item-start').map((e) => (e.type === 'item-start' ? e.queueLength + 1 : 0)));
    expect(maxQueueSeen).toBeLessThanOrEqual(2);
    const warnings = events.filter((e) => e.type === 'queue-warning');
    expect(warnings.length).toBeGreaterThanOrEqual(1);
    // One warning per episode: never two without the queue draining in between.
    let open = false;
    for (const e of events) {
      if (e.type === 'queue-warning') {
        expect(open).toBe(false);
        open = true;
      } else if (e.type === 'queue-ok') open = false;
    }
    const again = await runOnce(input, out, { dryRun: true });
    expect(again.events.every((e) => e.type !== 'dry-run-item' || e.status === 'done')).toBe(true);

    // Killed between storing an output and recording it: the restart keeps the output instead of recomputing it.
    const statePath = path.join(out, ...WATCH_STATE_KEY.slice(1).split('/'));
    const state = await readState(out);
    state.items['frame03.tif'].status = 'started';
    await fs.writeFile(statePath, JSON.stringify(state));
    const before = await fs.stat(path.join(out, 'frame03.tif'));
    // A file replaced after it was denoised is reported, not redone; a foreign output is refused.
    await writeImage(path.join(input, 'frame05.tif'), frame([24, 24], new Rng(1)), { overwrite: true });
    await fs.writeFile(path.join(out, 'extra.tif'), 'not ours');
    await writeImage(path.join(input, 'extra.tif'), frame([24, 24], new Rng(2)));
    const restart = await runOnce(input, out);
    expect(restart.events.flatMap((e) => (e.type === 'item-adopted' ? [e.key] : []))).toEqual(['frame03.tif']);
    expect((await fs.stat(path.join(out, 'frame03.tif'))).mtimeMs).toBe(before.mtimeMs);
    expect(restart.events.flatMap((e) => (e.type === 'item-changed' ? [e.key] : []))).toEqual(['frame05.tif']);
    expect(restart.events.flatMap((e) => (e.type === 'item-failed' ? [e.error] : []))).toEqual([expect.stringMatching(/extra\.tif: exists already and was not written by this watch/)]);
    expect(restart.events.some((e) => e.type === 'item-done')).toBe(false);
    expect(restart.result).toMatchObject({ processed: 0, adopted: 1, failed: 1 });
    expect((await readState(out)).items['frame03.tif'].status).toBe('done');

    // Outputs of another model are not mixed into this folder.
    const otherModel = path.join(tmp, 'model-other');
    await saveUntrainedModel(otherModel, cfg, normalisation, 5);
    await expect(runOnce(input, out, { modelDir: otherModel })).rejects.toThrow(/holds the outputs of another model/);
  });

  test('arrivals faster than the model: one rate warning for the episode, then queue-ok when it drains', async () => {
    const input = path.join(tmp, 'in8');
    const out = path.join(tmp, 'out8');
    await fs.mkdir(input);
    const sources = await encodeFrames(path.join(tmp, 'src8'), 6, [96, 96], 15);
    const stop = new AbortController();
    const events: WatchEvent[] = [];
    const running = watch({
      input,
      out,
      modelDir,
      settleMs: 0,
      pollMs: 20,
      // The tfjs engine: arrivals must outpace the model, and ONNX Runtime keeps up with them.
      engine: { engine: 'tfjs' },
      signal: stop.signal,
      onEvent: (e) => {
        events.push(e);
        if (events.filter((x) => x.type === 'item-done').length === 6) stop.abort();
      },
    });
    // Six frames 80 ms apart from another process (this one is busy with the model); one takes the model several times longer.
    await runWriter(sources.map((src) => ({ src, dest: path.join(input, path.basename(src)), delayMs: 80, pieces: 1, pauseMs: 0 })));
    const result = await running;
    expect(result.processed).toBe(6);
    const warnings = events.filter((e) => e.type === 'queue-warning');
    expect(warnings).toHaveLength(1);
    const warning = warnings[0] as Extract<WatchEvent, { type: 'queue-warning' }>;
    expect(warning.reason).toBe('rate');
    expect(warning.arrivalsPerSecond!).toBeGreaterThan(warning.itemsPerSecond!);
    expect(events.findIndex((e) => e.type === 'queue-ok')).toBeGreaterThan(events.indexOf(warning));
  });

  test('the state journal: one entry per change, folded into the snapshot every 256 and at stop', async () => {
    const input = path.join(tmp, 'in10');
    const out = path.join(tmp, 'out10');
    await fs.mkdir(input);
    // Undecodable files fail fast (with markers the first failure is final): two changes each, started and failed.
    for (let i = 0; i < 140; i++) {
      await fs.writeFile(path.join(input, `bad${i}.npy`), 'not numpy');
      await fs.writeFile(path.join(input, `bad${i}.npy.done`), '');
    }
    const seenJournal: number[] = [];
    const { result } = await runOnce(input, out, {
      marker: '.done',
      onEvent: (e) => {
        if (e.type === 'item-failed') seenJournal.push(readdirCount(path.join(out, '.blindspot-watch', 'journal')));
      },
    });
    expect(result.failed).toBe(140);
    // Never more than 256 entries waiting, and folded away at stop.
    expect(Math.max(...seenJournal)).toBeLessThanOrEqual(256);
    expect(Math.max(...seenJournal)).toBeGreaterThan(100);
    expect(readdirCount(path.join(out, '.blindspot-watch', 'journal'))).toBe(0);
    const snapshot = JSON.parse(await fs.readFile(path.join(out, ...WATCH_STATE_KEY.slice(1).split('/')), 'utf8')) as WatchState;
    expect(snapshot.journalSeq).toBe(280);
    expect(Object.values(snapshot.items).filter((i) => i.status === 'failed')).toHaveLength(140);
  });

  test('--marker: an item is taken only once its marker exists; --once does not wait for markers', async () => {
    const input = path.join(tmp, 'in6');
    const out = path.join(tmp, 'out6');
    const files = await encodeFrames(input, 3, [24, 24], 11);
    await fs.writeFile(files[1] + '.done', '');
    const first = await runOnce(input, out, { marker: '.done' });
    expect(first.events.flatMap((e) => (e.type === 'item-done' ? [e.key] : []))).toEqual(['frame01.tif']);
    await fs.writeFile(files[0] + '.done', '');
    await fs.writeFile(files[2] + '.done', '');
    const second = await runOnce(input, out, { marker: '.done' });
    expect(second.events.flatMap((e) => (e.type === 'item-done' ? [e.key] : [])).sort()).toEqual(['frame00.tif', 'frame02.tif']);
    for (const f of files) expect(await mismatch(f, path.join(out, path.basename(f)))).toBeLessThan(1e-5);
  });

  test('a Zarr array and the time points of a growing OME-Zarr, resumed after abandoning one', async () => {
    const input = path.join(tmp, 'in5');
    const out = path.join(tmp, 'out5');
    await fs.mkdir(input);
    const rng = new Rng(12);
    // A plain 2D Zarr array.
    const plainStore = new FileSystemStore(path.join(input, 'plain.zarr'));
    const plain = await createZarrArray(plainStore, '/', { shape: [40, 48], chunks: [16, 16], dtype: 'float32', zarrVersion: 3, codec: 'none' });
    for (const index of gridOf([40, 48], [16, 16])) await plain.writeChunk(index, Float32Array.from({ length: 256 }, () => 100 + 20 * rng.normal()));
    // A t,y,x OME-Zarr with 2 time points written, growing to 3 below.
    const movieStore = new FileSystemStore(path.join(input, 'movie.zarr'));
    const spec = (t: number) => ({ shape: [t, 32, 32], chunks: [1, 16, 16], dtype: 'float32' as const, zarrVersion: 3 as const, codec: 'none' as const, dimensionNames: ['t', 'y', 'x'] });
    const movie = await createZarrArray(movieStore, '0', spec(3));
    await movieStore.set('/0/zarr.json', encodeJson(arrayMetadata(spec(2))));
    const writeTime = async (t: number): Promise<void> => {
      for (const [y, x] of gridOf([32, 32], [16, 16])) await movie.writeChunk([t, y, x], Float32Array.from({ length: 256 }, () => 100 + t * 10 + 20 * rng.normal()));
    };
    await writeTime(0);
    await writeTime(1);
    await movieStore.set(
      '/zarr.json',
      encodeJson({
        zarr_format: 3,
        node_type: 'group',
        attributes: {
          ome: {
            version: '0.5',
            multiscales: [{ axes: [{ name: 't', type: 'time' }, { name: 'y', type: 'space' }, { name: 'x', type: 'space' }], datasets: [{ path: '0', coordinateTransformations: [{ type: 'scale', scale: [1, 1, 1] }] }] }],
          },
        },
      }),
    );

    // Abandon the first item at once: it stays 'started' and is resumed by the next run.
    const abandon = new AbortController();
    const stop = new AbortController();
    const first = await runOnce(input, out, {
      signal: stop.signal,
      abandon: abandon.signal,
      settleMs: 300,
      maxMemoryBytes: parseByteSize('512MiB'),
      onEvent: (e) => {
        if (e.type === 'item-start') {
          abandon.abort();
          stop.abort();
        }
      },
    });
    expect(first.result.interrupted).toBe(true);
    expect(first.result.processed).toBe(0);
    const abandoned = first.events.flatMap((e) => (e.type === 'item-abandoned' ? [e.key] : []));
    expect(abandoned).toHaveLength(1);
    expect((await readState(out)).items[abandoned[0]].status).toBe('started');

    // t=0 is complete (t extent 2 > 1), t=1 is the last: taken once the Zarr has settled.
    const second = await runOnce(input, out, { settleMs: 300, maxMemoryBytes: parseByteSize('512MiB') });
    const keys = second.events.flatMap((e) => (e.type === 'item-done' ? [e.key] : []));
    expect(keys.sort()).toEqual(['movie.zarr#t=0', 'movie.zarr#t=1', 'plain.zarr']);
    // The abandoned item's output was continued, not started again.
    expect(second.events.some((e) => e.type === 'stream' && e.key === abandoned[0] && e.event.type === 'stream-start')).toBe(true);
    // The time-lapse grows: only the new time point is done.
    await movieStore.set('/0/zarr.json', encodeJson(arrayMetadata(spec(3))));
    await writeTime(2);
    const third = await runOnce(input, out, { settleMs: 300, maxMemoryBytes: parseByteSize('512MiB') });
    expect(third.events.flatMap((e) => (e.type === 'item-done' ? [e.key] : []))).toEqual(['movie.zarr#t=2']);
    expect((await fs.readdir(out)).filter((n) => !n.startsWith('.')).sort()).toEqual(['movie.t0.zarr', 'movie.t1.zarr', 'movie.t2.zarr', 'plain.zarr']);
    // A Zarr output this watch did not start is not resumed into.
    await fs.cp(path.join(input, 'plain.zarr'), path.join(input, 'copy.zarr'), { recursive: true });
    await fs.cp(path.join(input, 'plain.zarr'), path.join(out, 'copy.zarr'), { recursive: true });
    const fourth = await runOnce(input, out, { settleMs: 0, maxMemoryBytes: parseByteSize('512MiB') });
    expect(fourth.events.flatMap((e) => (e.type === 'item-failed' ? [`${e.key}: ${e.error}`] : []))).toEqual([expect.stringMatching(/^copy\.zarr: .*copy\.zarr: exists already and was not written by this watch/)]);
    expect(await readAll(path.join(out, 'copy.zarr'))).toEqual(await readAll(path.join(input, 'plain.zarr')));

    // Each equals a direct streaming denoise of the same array (time point).
    for (const [name, time] of [['plain.zarr', undefined], ['movie.t2.zarr', 2]] as const) {
      const reference = path.join(tmp, `ref-${name}`);
      await denoiseUrl({ input: path.join(input, time === undefined ? name : 'movie.zarr'), out: reference, modelDir, maxMemoryBytes: parseByteSize('512MiB'), time });
      expect(await readAll(path.join(out, name))).toEqual(await readAll(reference));
    }
  });
});

function readdirCount(dir: string): number {
  try {
    return readdirSync(dir).length;
  } catch {
    return 0;
  }
}

function gridOf(shape: number[], chunks: number[]): number[][] {
  const grid = chunkGrid({ shape, chunks });
  const out: number[][] = [];
  for (let y = 0; y < grid[0]; y++) for (let x = 0; x < grid[1]; x++) out.push([y, x]);
  return out;
}

async function readAll(url: string, s3?: S3Settings): Promise<number[]> {
  const reader = await openChunkedSource(url, { s3 });
  const values: number[] = [];
  for (const index of gridOf([...reader.info.shape], [...reader.info.chunks])) values.push(...(await reader.readChunk(index)));
  await reader.close?.();
  return values;
}

if (!swiftAvailable()) console.log(`watch S3: skipped: ${SWIFT_MISSING_MESSAGE}`);

describe.skipIf(!swiftAvailable())('watch an S3 prefix (local Swift)', () => {
  let s3: LocalS3;

  beforeAll(async () => {
    // Started here, not beside the other tests: a loaded Swift answers 503 to its first requests.
    s3 = await startLocalS3({ buckets: ['watch'], exportCredentials: true });
  }, 120_000);

  afterAll(async () => {
    await s3?.stop();
  });

  test('image objects and a Zarr under a prefix -> outputs and state under another prefix, each once', async () => {
    const settings: S3Settings = { endpoint: s3.endpoint, region: s3.region };
    const incoming = new S3Store('s3://watch/incoming', settings);
    const sources = await encodeFrames(path.join(tmp, 'src7'), 2, [32, 40], 13);
    await incoming.set('/a.tif', new Uint8Array(await fs.readFile(sources[0])));
    await incoming.set('/sub/b.tif', new Uint8Array(await fs.readFile(sources[1])));
    await incoming.set('/.hidden.tif', new Uint8Array(await fs.readFile(sources[1])));
    const rng = new Rng(14);
    const volume = await createZarrArray(new S3Store('s3://watch/incoming/vol.zarr', settings), '/', { shape: [32, 32], chunks: [16, 16], dtype: 'float32', zarrVersion: 3, codec: 'none' });
    for (const index of gridOf([32, 32], [16, 16])) await volume.writeChunk(index, Float32Array.from({ length: 256 }, () => 100 + 20 * rng.normal()));
    await incoming.close();

    await expect(watch({ input: 's3://watch/incoming', out: 's3://watch/incoming/denoised', modelDir, s3: settings, once: true })).rejects.toThrow(/overwrite the input/);
    const events: WatchEvent[] = [];
    const common = { input: 's3://watch/incoming', out: 's3://watch/denoised', modelDir, s3: settings, once: true, settleMs: 300, pollMs: 50, maxMemoryBytes: parseByteSize('512MiB') };
    const result = await watch({ ...common, onEvent: (e) => events.push(e) });
    expect(result).toMatchObject({ processed: 3, failed: 0 });
    expect(events.flatMap((e) => (e.type === 'item-done' ? [e.key] : [])).sort()).toEqual(['a.tif', 'sub/b.tif', 'vol.zarr']);

    const denoised = new S3Store('s3://watch/denoised', settings);
    try {
      for (const [key, src] of [['a.tif', sources[0]], ['sub/b.tif', sources[1]]] as const) {
        const local = path.join(tmp, 'src7', `out-${path.basename(key)}`);
        await fs.writeFile(local, (await denoised.get('/' + key))!);
        expect(await mismatch(src, local)).toBeLessThan(1e-5);
      }
      // A clean stop folds the journal into the snapshot.
      const state = JSON.parse(Buffer.from((await denoised.get(WATCH_STATE_KEY))!).toString('utf8')) as WatchState;
      expect(state).toEqual(await readWatchState('s3://watch/denoised', settings));
      expect(Object.entries(state.items).map(([k, v]) => `${k}:${v.status}`).sort()).toEqual(['a.tif:done', 'sub/b.tif:done', 'vol.zarr:done']);
      expect(state.items['a.tif'].signature.etag).toBeTruthy();
    } finally {
      await denoised.close();
    }
    const reference = path.join(tmp, 'ref-s3-vol.zarr');
    await denoiseUrl({ input: 's3://watch/incoming/vol.zarr', out: reference, modelDir, maxMemoryBytes: parseByteSize('512MiB'), s3: settings });
    expect(await readAll('s3://watch/denoised/vol.zarr', settings)).toEqual(await readAll(reference));

    const again: WatchEvent[] = [];
    expect(await watch({ ...common, onEvent: (e) => again.push(e) })).toMatchObject({ processed: 0, failed: 0 });
    expect(again.some((e) => e.type === 'item-start')).toBe(false);
  }, 120_000);
});
