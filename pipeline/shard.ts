/**
 * Shards of a denoise run: which output blocks (chunks) shard i of N owns.
 *
 * A shard owns a contiguous run of block ordinals in raster (C) order: neighbouring blocks share
 * their halo reads, so a contiguous run reads each input chunk about once, where a round-robin
 * split would make every shard read almost the whole input. Sizes differ by at most one block.
 * The split depends on the block count and N alone, so shards started anywhere, at any moment,
 * agree on it without talking to each other.
 */
import { UsageError } from '../core/errors.js';

export interface ShardSpec {
  /** 0-based. */
  index: number;
  count: number;
}

/** Block ordinals [start, end) of `shard` among `blockCount` blocks. */
export function shardBlockRange(blockCount: number, shard: ShardSpec): { start: number; end: number } {
  return {
    start: Math.floor((shard.index * blockCount) / shard.count),
    end: Math.floor(((shard.index + 1) * blockCount) / shard.count),
  };
}

/** Environment variables that carry a shard index, in the order they are looked at. */
export const SHARD_INDEX_VARIABLES = ['JOB_COMPLETION_INDEX', 'AWS_BATCH_JOB_ARRAY_INDEX'] as const;

function parseCount(text: string, what: string): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1) throw new UsageError(`${what} must be a positive integer, got '${text}'`);
  return n;
}

/**
 * The shard of this process: `--shard i/N`, or `--shard-count N` with the index from a Kubernetes
 * Indexed Job (JOB_COMPLETION_INDEX) or an AWS Batch array job (AWS_BATCH_JOB_ARRAY_INDEX).
 * Undefined when neither option is given (one process does everything).
 */
export function resolveShard(opts: { shard?: string; shardCount?: string }, env: NodeJS.ProcessEnv = process.env): ShardSpec | undefined {
  if (opts.shard !== undefined && opts.shardCount !== undefined) throw new UsageError('give --shard i/N or --shard-count N, not both');
  let index: number;
  let count: number;
  if (opts.shard !== undefined) {
    const match = /^\s*(\d+)\s*\/\s*(\d+)\s*$/.exec(opts.shard);
    if (!match) throw new UsageError(`--shard must look like i/N (0-based index i of N shards), got '${opts.shard}'`);
    index = Number(match[1]);
    count = parseCount(match[2], '--shard N');
  } else if (opts.shardCount !== undefined) {
    count = parseCount(opts.shardCount, '--shard-count');
    const variable = SHARD_INDEX_VARIABLES.find((name) => env[name] !== undefined && env[name] !== '');
    if (!variable) throw new UsageError(`--shard-count needs the shard index in ${SHARD_INDEX_VARIABLES.join(' or ')} (set by Kubernetes Indexed Jobs and AWS Batch array jobs), or use --shard i/N`);
    const text = env[variable] as string;
    index = Number(text);
    if (!/^\d+$/.test(text.trim())) throw new UsageError(`${variable} must be a non-negative integer, got '${text}'`);
  } else {
    return undefined;
  }
  if (index >= count) throw new UsageError(`shard index ${index} is out of range for ${count} shard(s) (0-based: 0..${count - 1})`);
  return { index, count };
}

/** The folder of a shard's run record and journal, under the run's journal prefix. */
export function shardJournalPrefix(prefix: string, shard: ShardSpec): string {
  return `${prefix}/shards/${shard.index}-of-${shard.count}`;
}
