/**
 * `blindspot plan`: what a streaming denoise of an input would be (blocks, bytes, memory), what one
 * block costs on this machine's backend, measured, and how many shards meet a target wall time.
 *
 * The cost is measured by denoising a contiguous run of real blocks from the middle of the input
 * (reads, prediction and writes to a scratch OME-Zarr on local disk, pipelined and cached as in a
 * real run, which is also how a shard sees its blocks), after one warm-up block that pays for
 * kernel compilation. Blocks at the edges of a volume cost a little less (less real data in the halo).
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { voxelCount } from '../core/volume.js';
import { chunkGrid } from '../storage/chunked.js';
import { createOmeZarr } from '../storage/ome.js';
import { bytesPerSample } from '../storage/common.js';
import { type DenoiseUrlOptions, type PreparedDenoise, type StreamMemoryPlan, denoiseChunked, prepareDenoise } from './streamDenoise.js';
import { type ShardSpec, shardBlockRange } from './shard.js';

export interface DenoisePlan {
  input: string;
  shape: number[];
  dtype: string;
  /** Output chunk = tile core, voxels per axis. */
  blockShape: number[];
  blocks: number;
  inputBytes: number;
  /** Level 0 only, uncompressed. */
  outputBytes: number;
  memory: StreamMemoryPlan;
  /** This process's share when sharded. */
  shard?: ShardSpec & { blockStart: number; blockEnd: number };
}

export interface BlockCost {
  backend: string;
  /** The inference engine the blocks were timed with (the one the run will use): name, provider, threads. */
  engine: string;
  /** Blocks timed, one contiguous run (after one warm-up block). */
  sampledBlocks: number;
  secondsPerBlock: number;
  /** Of the sampled blocks: voxels denoised per second. */
  megavoxelsPerSecond: number;
  /** blocks x secondsPerBlock on one process like this one. */
  totalSeconds: number;
  /** Shards (processes like this one) to finish within the target, when one was given. */
  suggestedShards?: number;
  targetSeconds?: number;
}

/** The plan of a streaming denoise, from a prepared job (nothing written). */
export function describeDenoisePlan(job: PreparedDenoise, inputUrl: string, shard?: ShardSpec): DenoisePlan {
  const { shape, dtype } = job.input.info;
  const blockShape = [...job.memory.coreShape];
  const blocks = voxelCount(chunkGrid({ shape, chunks: blockShape }));
  const outputBytes = voxelCount(shape) * bytesPerSample[job.dtype];
  const range = shard ? shardBlockRange(blocks, shard) : undefined;
  return {
    input: inputUrl,
    shape: [...shape],
    dtype,
    blockShape,
    blocks,
    inputBytes: voxelCount(shape) * bytesPerSample[dtype],
    outputBytes,
    memory: job.memory,
    ...(shard && range ? { shard: { ...shard, blockStart: range.start, blockEnd: range.end } } : {}),
  };
}


/** Measures the per-block cost of denoising `job`'s input on the current backend (see the module comment). */
export async function measureBlockCost(
  job: PreparedDenoise,
  opts: { backend: string; sampleBlocks?: number; targetSeconds?: number; maxMemoryBytes: number; tta?: boolean },
): Promise<BlockCost> {
  const plan = describeDenoisePlan(job, '');
  const scratch = await fs.mkdtemp(path.join(os.tmpdir(), 'blindspot-plan-'));
  try {
    const writer = await createOmeZarr(path.join(scratch, 'sample.zarr'), {
      shape: plan.shape,
      chunks: plan.blockShape,
      dtype: job.dtype,
      axes: [...job.input.info.axes],
      placement: job.input.info.placement,
      maxLevels: 1,
    });
    // A run of blocks is a shard: `count` shards of about `size` blocks each, the middle one timed.
    const denoiseRun = async (shard: { index: number; count: number }): Promise<number> => {
      const t0 = performance.now();
      await denoiseChunked({
        input: job.input,
        output: writer,
        model: job.tileModel,
        ...job.geometry,
        normalisation: job.manifest.normalisation,
        maxMemoryBytes: opts.maxMemoryBytes,
        modelWeightBytes: job.modelWeightBytes,
        bytesPerVoxel: job.bytesPerVoxel,
        tta: opts.tta,
        shard,
      });
      return (performance.now() - t0) / 1000;
    };
    await denoiseRun({ index: 0, count: plan.blocks });
    const wanted = Math.max(1, Math.min(opts.sampleBlocks ?? 8, plan.blocks));
    const count = Math.max(1, Math.floor(plan.blocks / wanted));
    const timed = { index: Math.floor(count / 2), count };
    const range = shardBlockRange(plan.blocks, timed);
    const sampledBlocks = range.end - range.start;
    const secondsPerBlock = (await denoiseRun(timed)) / sampledBlocks;
    const totalSeconds = secondsPerBlock * plan.blocks;
    const engine = job.tileModel;
    return {
      backend: opts.backend,
      engine: `${engine.name} (${engine.provider}, ${engine.threads} thread(s))`,
      sampledBlocks,
      secondsPerBlock,
      megavoxelsPerSecond: voxelCount(plan.blockShape) / 1e6 / secondsPerBlock,
      totalSeconds,
      ...(opts.targetSeconds !== undefined
        ? { targetSeconds: opts.targetSeconds, suggestedShards: Math.min(plan.blocks, Math.max(1, Math.ceil(totalSeconds / opts.targetSeconds))) }
        : {}),
    };
  } finally {
    await fs.rm(scratch, { recursive: true, force: true });
  }
}

/** `blindspot plan`: the plan, and with `measure` the per-block cost and a suggested shard count. */
export async function planDenoise(
  opts: Omit<DenoiseUrlOptions, 'out'> & { measure: boolean; backend: string; sampleBlocks?: number; targetSeconds?: number },
): Promise<{ plan: DenoisePlan; cost?: BlockCost }> {
  const job = await prepareDenoise(opts);
  try {
    const plan = describeDenoisePlan(job, opts.input, opts.shard);
    if (!opts.measure) return { plan };
    const cost = await measureBlockCost(job, {
      backend: opts.backend,
      sampleBlocks: opts.sampleBlocks,
      targetSeconds: opts.targetSeconds,
      maxMemoryBytes: opts.maxMemoryBytes,
      tta: opts.tta,
    });
    return { plan, cost };
  } finally {
    await job.close();
  }
}
