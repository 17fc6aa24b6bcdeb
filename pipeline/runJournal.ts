/**
 * Resume of streaming denoise runs: the run record and the journal of sha256 checksums of every
 * stored chunk, kept in the output's own ByteStore, and the run fingerprint (model and options)
 * that decides whether a journal belongs to this run.
 */
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { type WrittenChunk } from '../operators/writeChunks.js';
import type { ByteStore } from '../storage/byteStore.js';
import { MANIFEST_JSON, MODEL_JSON, WEIGHTS_BIN } from '../models/io.js';

/** A journal of stored chunks and the fingerprint of the run that wrote them, kept in a ByteStore under `prefix`. */
export class RunJournal {
  private pending: WrittenChunk[] = [];
  private nextSegment = 0;
  private flushing: Promise<void> = Promise.resolve();
  private lastFlush = Date.now();

  constructor(
    readonly store: ByteStore,
    readonly prefix: string,
    readonly fingerprint: string,
    /** Flush after this many chunks or this many ms, whichever first. */
    readonly flushEvery = { chunks: 32, ms: 1000 },
  ) {}

  private get runKey(): string {
    return `${this.prefix}/run.json`;
  }

  private segmentKey(n: number): string {
    return `${this.prefix}/journal/${String(n).padStart(8, '0')}.json`;
  }

  /** The stored run record, or null when there is none. */
  async readRun(): Promise<{ fingerprint: string; complete: boolean } | null> {
    const bytes = await this.store.get(this.runKey);
    if (!bytes) return null;
    return JSON.parse(Buffer.from(bytes).toString('utf8')) as { fingerprint: string; complete: boolean };
  }

  async writeRun(complete: boolean): Promise<void> {
    await this.store.set(this.runKey, new TextEncoder().encode(JSON.stringify({ format: 'blindspot-denoise-run', fingerprint: this.fingerprint, complete }) + '\n'));
  }

  /** Every journaled chunk (key 'i.j.k' -> sha256), later segments winning; also sets the next segment number. */
  async readEntries(): Promise<Map<string, string>> {
    const keys: string[] = [];
    for await (const key of this.store.list(`${this.prefix}/journal/`)) keys.push(key);
    keys.sort();
    const entries = new Map<string, string>();
    for (const key of keys) {
      const bytes = await this.store.get(key);
      if (!bytes) continue;
      let segment: { fingerprint: string; chunks: Array<[string, string]> };
      try {
        segment = JSON.parse(Buffer.from(bytes).toString('utf8'));
      } catch {
        continue; // Unreadable segments only cost recomputation.
      }
      if (segment.fingerprint !== this.fingerprint) continue;
      for (const [chunk, sha] of segment.chunks) entries.set(chunk, sha);
      const n = Number(key.slice(key.lastIndexOf('/') + 1, -'.json'.length));
      if (Number.isInteger(n)) this.nextSegment = Math.max(this.nextSegment, n + 1);
    }
    return entries;
  }

  record(chunk: WrittenChunk): Promise<void> {
    this.pending.push(chunk);
    if (this.pending.length >= this.flushEvery.chunks || Date.now() - this.lastFlush >= this.flushEvery.ms) return this.flush();
    return Promise.resolve();
  }

  /** Writes the pending entries as one new segment (segments are written one at a time, in order). */
  flush(): Promise<void> {
    const batch = this.pending;
    this.pending = [];
    this.lastFlush = Date.now();
    if (batch.length === 0) return this.flushing;
    const n = this.nextSegment++;
    const body = JSON.stringify({ fingerprint: this.fingerprint, chunks: batch.map((c) => [c.index.join('.'), c.sha256]) });
    this.flushing = this.flushing.then(() => this.store.set(this.segmentKey(n), new TextEncoder().encode(body)));
    return this.flushing;
  }

  /** Drops the journal segments (after the run record says complete). */
  async removeSegments(): Promise<void> {
    const keys: string[] = [];
    for await (const key of this.store.list(`${this.prefix}/journal/`)) keys.push(key);
    for (const key of keys) await this.store.delete(key);
  }
}

/** sha256 of the things that decide the output's bytes: the model and the options. */
export function runFingerprint(parts: Record<string, unknown>): string {
  return createHash('sha256').update(JSON.stringify(parts)).digest('hex');
}

export const JOURNAL_PREFIX = '/.blindspot-denoise';

/** sha256 of a model folder's files (network, weights, manifest): the model part of the run fingerprint. */
export async function modelFolderHash(dir: string): Promise<string> {
  const hash = createHash('sha256');
  for (const name of [MODEL_JSON, WEIGHTS_BIN, MANIFEST_JSON]) {
    hash.update(name);
    hash.update(await fs.readFile(path.join(dir, name)));
  }
  return hash.digest('hex');
}
