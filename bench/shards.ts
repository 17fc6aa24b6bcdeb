/**
 * bench:shards: one `blindspot denoise` process against N shards (separate processes, started
 * together) on the same OME-Zarr input, on this machine: wall times, speed-up, what each process pays
 * before its first block (backend start, model load, opening the input), and the per-block cost that
 * `blindspot plan` measures; then, from that measured per-block cost, wall time and machine-hours for
 * 1 TB on N machines like this one.
 *
 * On a 2-core machine one process already uses both cores (wasm threads), so N shards with one
 * thread each cannot be faster in compute: what the benchmark shows is the overhead of sharding.
 *
 * Options: --size N (side of the 2D input, default 2048), --chunks N (output chunk side, default 256),
 * --filters N (U-Net filters, default 32), --shards N (default 2), --backend wasm|cpu (default wasm),
 * --price-per-hour USD (price of one machine like this for the 1 TB table, default 0.10; an assumption),
 * --engine auto|onnx|tfjs (inference engine of every run, default auto: ONNX Runtime).
 */
import { spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { Rng } from '../core/rng.js';
import { PACKAGE_ROOT } from '../core/version.js';
import { defaultUNetConfig } from '../models/unet.js';
import { chunkGrid } from '../storage/chunked.js';
import { createOmeZarr } from '../storage/ome.js';
import { saveUntrainedModel } from '../test/fixtures/untrainedModel.js';
import { benchArgs, writeResult } from './common.js';

const CLI = path.join(PACKAGE_ROOT, 'dist', 'cli', 'main.js');

interface ProcessRun {
  wallSeconds: number;
  /** From spawn to the first stored block. */
  secondsToFirstBlock: number;
  blocks: number;
  /** The run's own stream seconds (first tile read to last block stored). */
  streamSeconds: number;
  events: Array<Record<string, unknown>>;
}

function runCli(args: string[], cwd: string): Promise<ProcessRun> {
  const t0 = performance.now();
  let firstBlock = 0;
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args, '--json'], { cwd });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
      if (!firstBlock && stdout.includes('"type":"chunk"')) firstBlock = performance.now();
    });
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('close', (code) => {
      if (code !== 0) return reject(new Error(`blindspot ${args.join(' ')} exited ${code}: ${stderr}`));
      const events = stdout
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l) as Record<string, unknown>);
      const done = events.find((e) => e.type === 'stream-done') as { seconds: number } | undefined;
      resolve({
        wallSeconds: (performance.now() - t0) / 1000,
        secondsToFirstBlock: (firstBlock - t0) / 1000,
        blocks: events.filter((e) => e.type === 'chunk').length,
        streamSeconds: done?.seconds ?? Number.NaN,
        events,
      });
    });
  });
}

async function main(): Promise<void> {
  const args = benchArgs(process.argv.slice(2));
  const side = Number(args.get('size') ?? 2048);
  const chunk = Number(args.get('chunks') ?? 256);
  const filters = Number(args.get('filters') ?? 32);
  const shards = Number(args.get('shards') ?? 2);
  const backend = args.get('backend') ?? 'wasm';
  const engine = args.get('engine') ?? 'auto';
  const pricePerHour = Number(args.get('price-per-hour') ?? 0.1);
  const threads = os.availableParallelism();
  await tf.setBackend('cpu');

  const tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'blindspot-bench-shards-'));
  try {
    const modelDir = path.join(tmp, 'model');
    await saveUntrainedModel(modelDir, { ...defaultUNetConfig(2), filters }, { mode: 'meanstd', offset: 100, scale: 30 }, 1);
    const input = path.join(tmp, 'in.zarr');
    const writer = await createOmeZarr(input, {
      shape: [side, side],
      chunks: [chunk, chunk],
      dtype: 'uint16',
      axes: [{ name: 'y', type: 'space' }, { name: 'x', type: 'space' }],
      placement: { scale: [1, 1], translation: [0, 0] },
      maxLevels: 1,
    });
    const rng = new Rng(5);
    const grid = chunkGrid(writer.info);
    for (let y = 0; y < grid[0]; y++) for (let x = 0; x < grid[1]; x++) await writer.writeChunk([y, x], Float32Array.from({ length: chunk * chunk }, () => 100 + 30 * rng.normal()));
    const blocks = grid[0] * grid[1];
    const common = ['--output-chunks', `${chunk}x${chunk}`, '--backend', backend, '--engine', engine];
    console.log(`input ${side}x${side} uint16 (${blocks} blocks of ${chunk}x${chunk}), U-Net ${filters} filters, backend ${backend}, engine ${engine}`);

    const plan = await runCli(['plan', input, '--model', modelDir, ...common, '--threads', String(threads), '--sample-blocks', '8', '--target', '1h'], tmp);
    const cost = (plan.events.find((e) => e.type === 'plan') as { cost: { secondsPerBlock: number; megavoxelsPerSecond: number; engine: string } }).cost;
    console.log(`plan: ${cost.secondsPerBlock.toFixed(3)} s per block (${cost.megavoxelsPerSecond.toFixed(2)} Mvoxel/s) on ${threads} thread(s), engine ${cost.engine}`);

    await fs.mkdir(path.join(tmp, 'one'));
    const one = await runCli(['denoise', modelDir, input, '--out', 'out.zarr', ...common, '--threads', String(threads)], path.join(tmp, 'one'));
    console.log(`1 process, ${threads} thread(s): ${one.wallSeconds.toFixed(1)} s wall, ${one.secondsToFirstBlock.toFixed(1)} s to the first block`);

    await fs.mkdir(path.join(tmp, 'sharded'));
    const threadsPerShard = Math.max(1, Math.floor(threads / shards));
    const t0 = performance.now();
    const runs = await Promise.all(
      Array.from({ length: shards }, (_, i) => runCli(['denoise', modelDir, input, '--out', 'out.zarr', ...common, '--threads', String(threadsPerShard), '--shard', `${i}/${shards}`], path.join(tmp, 'sharded'))),
    );
    const shardedWall = (performance.now() - t0) / 1000;
    console.log(`${shards} shards, ${threadsPerShard} thread(s) each: ${shardedWall.toFixed(1)} s wall`);
    const blocksDone = runs.reduce((n, r) => n + r.blocks, 0);
    if (blocksDone !== blocks || one.blocks !== blocks) throw new Error(`blocks: one process ${one.blocks}, shards ${blocksDone}, expected ${blocks}`);

    // Machine time per block: wall x processes' share of the machine. One process owns it all; each shard 1/N.
    const onePerBlock = one.wallSeconds / blocks;
    const shardedPerBlock = shardedWall / blocks;
    const startupSeconds = runs.map((r) => r.secondsToFirstBlock);
    const bytesPerTB = 1e12;
    const voxelsPerTB = bytesPerTB / 2; // uint16
    const blocksPerTB = voxelsPerTB / (chunk * chunk);
    const machineHoursPerTB = (blocksPerTB * cost.secondsPerBlock) / 3600;
    const estimate = [1, 8, 32, 128, 512].map((n) => ({
      machines: n,
      wallHours: machineHoursPerTB / n + Math.max(...startupSeconds) / 3600,
      machineHours: machineHoursPerTB + (n * Math.max(...startupSeconds)) / 3600,
      costUsd: (machineHoursPerTB + (n * Math.max(...startupSeconds)) / 3600) * pricePerHour,
    }));
    const file = await writeResult('shards', {
      input: { shape: [side, side], dtype: 'uint16', blockShape: [chunk, chunk], blocks },
      model: { network: 'U-Net', depth: 2, filters },
      backend,
      engine,
      loadAverage: os.loadavg(),
      plan: cost,
      oneProcess: { threads, wallSeconds: one.wallSeconds, streamSeconds: one.streamSeconds, secondsToFirstBlock: one.secondsToFirstBlock, secondsPerBlock: onePerBlock },
      sharded: {
        shards,
        threadsPerShard,
        wallSeconds: shardedWall,
        secondsPerBlock: shardedPerBlock,
        perShard: runs.map((r) => ({ wallSeconds: r.wallSeconds, blocks: r.blocks, streamSeconds: r.streamSeconds, secondsToFirstBlock: r.secondsToFirstBlock })),
      },
      speedUp: one.wallSeconds / shardedWall,
      /** Extra machine-seconds per block that sharding costs here (positive: slower). */
      perBlockOverheadSeconds: shardedPerBlock - onePerBlock,
      oneTerabyte: {
        assumption: `uint16 input, blocks of ${chunk}x${chunk}, per-block cost as measured by plan on this machine (engine ${cost.engine}, backend ${backend}, ${threads} threads), each machine pays the measured start-up once, $${pricePerHour}/machine-hour (assumed)`,
        blocks: blocksPerTB,
        machineHours: machineHoursPerTB,
        estimate,
      },
    });
    console.log(`speed-up ${(one.wallSeconds / shardedWall).toFixed(2)}x, per-block overhead ${((shardedPerBlock - onePerBlock) * 1000).toFixed(1)} ms`);
    console.log(`1 TB (uint16) on machines like this: ${machineHoursPerTB.toFixed(0)} machine-hours`);
    for (const e of estimate) console.log(`  ${String(e.machines).padStart(4)} machines: ${e.wallHours.toFixed(1)} h wall, $${e.costUsd.toFixed(0)}`);
    console.log(`results: ${path.relative(PACKAGE_ROOT, file)}`);
  } finally {
    await fs.rm(tmp, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
