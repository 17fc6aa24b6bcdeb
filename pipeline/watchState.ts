/**
 * The state of a watch, kept in its output: a snapshot (`<out>/.blindspot-watch/state.json`) plus a
 * journal of the changes since, folded into the snapshot every few hundred changes; what makes a
 * watch exactly-once across restarts (pipeline/watch.ts module comment).
 */
import { OutputError } from '../core/errors.js';
import type { ByteStore } from '../storage/byteStore.js';
import { openByteStore } from '../storage/open.js';
import { type S3Settings } from '../storage/s3.js';

export type WatchItemKind = 'file' | 'zarr' | 'timepoint';

/** What identifies one version of an item: a changed signature is a changed item. */
export interface ItemSignature {
  /** Bytes (a Zarr: all its files together). */
  size: number;
  /** Last modification, ms since the epoch (a Zarr: its newest file); null where unknown. */
  mtimeMs: number | null;
  /** S3 ETag of an object. */
  etag?: string;
  /** Files of a Zarr. */
  files?: number;
}

export interface WatchStateItem {
  kind: WatchItemKind;
  status: 'started' | 'done' | 'failed';
  signature: ItemSignature;
  /** Output path or URL. */
  output: string;
  startedAt?: string;
  finishedAt?: string;
  /** Processing seconds (read, denoise, write). */
  seconds?: number;
  /** Seconds from arrival (the item's last modification, else our first sight) to stored output. */
  latencySeconds?: number;
  error?: string;
}

export interface WatchState {
  format: 'blindspot-watch-state';
  formatVersion: 1;
  input: string;
  model: { folder: string; sha256: string };
  /** By item key: the path relative to the watched root; a time point is `<name>.zarr#t=<t>`. */
  items: Record<string, WatchStateItem>;
  updatedAt: string;
  /** The last journal entry this snapshot holds (later ones are applied on reading). */
  journalSeq?: number;
}

export const WATCH_STATE_KEY = '/.blindspot-watch/state.json';

export function sameSignature(a: ItemSignature, b: ItemSignature): boolean {
  return a.size === b.size && a.mtimeMs === b.mtimeMs && a.etag === b.etag && a.files === b.files;
}

export function signatureText(s: ItemSignature): string {
  return JSON.stringify([s.size, s.mtimeMs, s.etag ?? null, s.files ?? null]);
}

export const JOURNAL_PREFIX = '/.blindspot-watch/journal/';

/** Journal entries between snapshots: bounds both the journal's length and how often the whole state is rewritten. */
export const COMPACT_EVERY = 256;

export function journalKey(seq: number): string {
  return `${JOURNAL_PREFIX}${String(seq).padStart(12, '0')}.json`;
}

export function journalSeqOf(key: string): number | null {
  const match = /\/(\d{12})\.json$/.exec(key);
  return match ? Number(match[1]) : null;
}

/**
 * The watch state in the output's store. A change is one small journal object (written atomically,
 * one at a time, in order); every COMPACT_EVERY changes, and at start and stop, the whole state is
 * written as a snapshot (`state.json`, atomically) naming the last change it holds, and the journal
 * up to there is removed. Rewriting the whole state per change would cost O(items) per item (130 ms
 * per write at 10,000 items here). Reading: the snapshot, then the journal entries after it.
 */
export class WatchStateStore {
  private writing: Promise<void> = Promise.resolve();
  private sinceSnapshot = 0;
  constructor(
    private readonly store: ByteStore,
    readonly state: WatchState,
    /** Number of the last journal entry written or queued. */
    private seq: number,
  ) {}

  /** The stored state (snapshot plus journal) and the last journal number, or null when there is none. */
  static async load(store: ByteStore): Promise<{ state: WatchState; seq: number } | null> {
    const where = `${store.url}${WATCH_STATE_KEY}`;
    const bytes = await store.get(WATCH_STATE_KEY);
    const entries: Array<{ seq: number; key: string }> = [];
    for await (const key of store.list(JOURNAL_PREFIX)) {
      const seq = journalSeqOf(key);
      if (seq !== null) entries.push({ seq, key });
    }
    if (!bytes) {
      if (entries.length) throw new OutputError(where, `is missing but its journal is there; move the .blindspot-watch folder away to start afresh`);
      return null;
    }
    let state: WatchState;
    try {
      state = JSON.parse(Buffer.from(bytes).toString('utf8')) as WatchState;
      if (state.format !== 'blindspot-watch-state' || typeof state.items !== 'object') throw new Error('not a blindspot watch state');
    } catch (err) {
      throw new OutputError(where, `is not a readable watch state (${(err as Error).message}); move the .blindspot-watch folder away to start afresh`);
    }
    const base = state.journalSeq ?? 0;
    let seq = base;
    entries.sort((a, b) => a.seq - b.seq);
    for (const entry of entries) {
      seq = Math.max(seq, entry.seq);
      // At or before the snapshot: already in it (left over by a compaction that was cut short).
      if (entry.seq <= base) continue;
      const body = await store.get(entry.key);
      if (!body) continue;
      const change = JSON.parse(Buffer.from(body).toString('utf8')) as { key: string; item: WatchStateItem };
      state.items[change.key] = change.item;
    }
    return { state, seq };
  }

  set(key: string, item: WatchStateItem): Promise<void> {
    this.state.items[key] = item;
    const seq = ++this.seq;
    const body = new TextEncoder().encode(JSON.stringify({ key, item }) + '\n');
    this.writing = this.writing.then(() => this.store.set(journalKey(seq), body));
    if (++this.sinceSnapshot >= COMPACT_EVERY) return this.snapshot();
    return this.writing;
  }

  /** Writes the whole state, then removes the journal entries it holds. */
  snapshot(): Promise<void> {
    this.sinceSnapshot = 0;
    this.writing = this.writing.then(async () => {
      // Taken together: the in-memory state holds exactly the changes numbered up to this.seq.
      const upTo = this.seq;
      this.state.journalSeq = upTo;
      this.state.updatedAt = new Date().toISOString();
      await this.store.set(WATCH_STATE_KEY, new TextEncoder().encode(JSON.stringify(this.state, null, 1) + '\n'));
      const stale: string[] = [];
      for await (const key of this.store.list(JOURNAL_PREFIX)) {
        const seq = journalSeqOf(key);
        if (seq !== null && seq <= upTo) stale.push(key);
      }
      for (const key of stale) await this.store.delete(key);
    });
    return this.writing;
  }

  /** Waits for writes under way (without starting one). */
  settled(): Promise<void> {
    return this.writing;
  }
}

/** The stored watch state of an output (snapshot plus journal), or null when it has none. */
export async function readWatchState(out: string, s3?: S3Settings): Promise<WatchState | null> {
  const store = openByteStore(out, s3);
  try {
    return (await WatchStateStore.load(store))?.state ?? null;
  } finally {
    await store.close?.();
  }
}

/** The state cannot be stored: the watch cannot go on without its record (ends it with the output exit code). */
export class StateWriteError extends OutputError {}
