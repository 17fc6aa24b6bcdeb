/**
 * Shard completion: the run records of the shards of a sharded run (pipeline/shard.ts), read to
 * learn whether a run is being written by shards, by how many, and whether all are complete.
 */
import type { ByteStore } from '../storage/byteStore.js';
import { type ShardSpec } from './shard.js';

/** The run records of a sharded run's shards (under `prefix`/shards/i-of-N/run.json). */
export async function readShardRuns(store: ByteStore, prefix: string): Promise<Array<ShardSpec & { fingerprint: string; complete: boolean }>> {
  const runs: Array<ShardSpec & { fingerprint: string; complete: boolean }> = [];
  for await (const key of store.list(`${prefix}/shards/`)) {
    const match = /\/shards\/(\d+)-of-(\d+)\/run\.json$/.exec(key);
    if (!match) continue;
    const bytes = await store.get(key);
    if (!bytes) continue;
    try {
      const run = JSON.parse(Buffer.from(bytes).toString('utf8')) as { fingerprint: string; complete: boolean };
      runs.push({ index: Number(match[1]), count: Number(match[2]), fingerprint: run.fingerprint, complete: run.complete === true });
    } catch {
      // A torn record counts as not complete.
    }
  }
  return runs;
}
