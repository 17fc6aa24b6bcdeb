/**
 * Watch mode: denoise each new acquisition in a folder (or under an S3 prefix) as it lands.
 *
 * Items
 *   - image files (whatever storage/index.ts readImage reads: TIFF, PNG, FITS, .npy), anywhere below
 *     the watched root -> `<out>/<same relative path>` named like pipeline/denoise.ts outputPathFor;
 *   - Zarr arrays: a `<name>.zarr` folder (or S3 prefix) without a time axis -> `<out>/<name>.zarr`
 *     (pipeline/streamDenoise.ts denoiseUrl, bounded memory, resumable);
 *   - time points of an OME-Zarr with a t axis (a growing time-lapse) -> `<out>/<name>.t<t>.zarr`.
 *   Hidden names (starting with '.') are never items: writers' temp files live there.
 *
 * Completeness (an item is taken only when complete)
 *   - default: its signature (size and mtime; S3: size and ETag; a Zarr: file count, bytes and latest
 *     mtime) has not changed for `settleMs`, measured from our first sight of the current signature,
 *     or from the file's mtime when that is older (files already sitting there are complete at once).
 *     S3 objects appear whole (a PUT or a completed multipart upload is atomic), so a listed image
 *     object is complete on sight.
 *   - with `marker` (e.g. '.done'): only when `<item><marker>` exists next to it (`a.tif.done`,
 *     `run.zarr.done`); for a time-lapse `<name>.zarr.t<t><marker>` completes time point t and
 *     `<name>.zarr<marker>` all of them.
 *   - time point t of a time-lapse (no marker): complete once the array's t extent is past t (the
 *     writer has started t+1); the last time point once the whole Zarr is unchanged for `settleMs`.
 *     Writers that preallocate the whole t axis must use markers.
 *   A file that fails to decode is taken again after it has been unchanged for another `settleMs`
 *   (the writer may have paused longer than the settle time); failing again unchanged, it is recorded
 *   as failed (error naming the file) and watching goes on. With markers or on S3 the first decode
 *   failure is final: the item was declared complete.
 *
 * Exactly once
 *   State lives in the output: `<out>/.blindspot-watch/state.json`, a snapshot written atomically
 *   (temp + rename; one PUT on S3), plus a journal of the changes since (one small atomic object
 *   per change, folded into the snapshot every few hundred changes and at start and stop). Before
 *   an item is computed it is recorded as 'started', after its output is stored as 'done' with the
 *   signature it had. Outputs are written under a staging name and renamed (one PUT on S3), Zarr
 *   outputs chunk by chunk with denoiseUrl's journal; so a watcher killed at any moment leaves no
 *   torn output, and on restart a 'started' item whose output exists is adopted (not recomputed), a
 *   'started' Zarr is resumed, 'done' items are skipped (a done file whose signature changed is
 *   reported, not redone), and everything else is processed. An existing output this watch did not
 *   start is refused (files: unless `overwrite`). One watcher per output.
 *
 * Latency: each item-done event carries the seconds from arrival (the item's last modification, or
 * our first sight of a time point) to its stored output, settling and queueing included, and the
 * processing seconds alone.
 *
 * Stopping: `signal` takes nothing new and lets the item in flight finish; `abandon` stops it at its
 * next chunk (a Zarr) or, for a file, at its next tile or before its output is written (a forward
 * pass does not yield to timers, so in practice the latter), leaving it 'started' for the next run. The CLI (cli/watch.ts)
 * maps SIGTERM/SIGINT and --grace-seconds onto these.
 *
 * Backpressure
 *   discovery (a poll every `pollMs`) -> a bounded queue (at most `maxQueue` items admitted and not
 *   finished) -> one item at a time through the model. Ready items beyond the queue's room are not
 *   taken (they are found again on the next poll, never dropped), and a queue-warning is raised once
 *   per episode (until the queue drains) when the queue is full or the arrival rate exceeds the
 *   measured processing rate.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ListObjectsV2Command } from '@aws-sdk/client-s3';
import type * as tfl from '@tensorflow/tfjs-layers';
import { NEVER, type Observable, concatMap, defer, from, fromEvent, lastValueFrom, mergeMap, of, repeat, take, takeUntil, takeWhile, timer } from 'rxjs';
import { BlindspotError, InputError, OutputError, UsageError } from '../core/errors.js';
import type { SampleType, Volume } from '../core/volume.js';
import { loadModelFolder, readManifest, type ModelManifest } from '../models/io.js';
import { denoiseVolume, outputPathFor, type OutputType } from './denoise.js';
import { assertOutputIsNotInput, denoiseUrl, modelFolderHash } from './streamDenoise.js';
import type { ByteStore } from '../storage/byteStore.js';
import { isSupportedImage, readImage, writeImage } from '../storage/index.js';
import { ngffAxes, readOmeMetadata } from '../storage/ome.js';
import { openByteStore } from '../storage/open.js';
import { S3Store, createS3Client, isS3Url, parseS3Url, type S3Settings } from '../storage/s3.js';
import { FileSystemStore } from '../storage/fsStore.js';
import { readZarrArraySpec } from '../storage/zarr.js';
import type { InferenceEngine } from '../engines/engine.js';
import { type EngineRequest, engineEvent, openModelEngine } from '../engines/modelEngine.js';

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
/** Listings failing this many polls in a row end the watch (fewer are logged and retried). */
const MAX_LISTING_FAILURES = 10;
const STAGING_DIR = '.blindspot-watch/staging';

export type WatchEvent =
  | ReturnType<typeof engineEvent>
  | { type: 'watch-start'; input: string; out: string; settleMs: number; pollMs: number; maxQueue: number; marker: string | null; done: number; failed: number }
  | { type: 'item-seen'; key: string; kind: WatchItemKind }
  | { type: 'item-start'; key: string; kind: WatchItemKind; output: string; waitedSeconds: number; queueLength: number }
  | {
      type: 'item-done';
      key: string;
      kind: WatchItemKind;
      output: string;
      /** Processing: read, denoise, write. */
      seconds: number;
      /** Arrival to stored output (settling and queueing included). */
      latencySeconds: number;
      megapixelsPerSecond: number;
      queueLength: number;
      /** Queue length / measured processing rate. */
      queueEtaSeconds: number | null;
    }
  | { type: 'item-adopted'; key: string; kind: WatchItemKind; output: string }
  | { type: 'item-retry'; key: string; kind: WatchItemKind; error: string }
  | { type: 'item-failed'; key: string; kind: WatchItemKind; error: string }
  | { type: 'item-abandoned'; key: string; kind: WatchItemKind }
  | { type: 'item-changed'; key: string; kind: WatchItemKind; output: string }
  | { type: 'queue-warning'; reason: 'queue-full' | 'rate'; queueLength: number; maxQueue: number; waiting: number; arrivalsPerSecond: number | null; itemsPerSecond: number | null }
  | { type: 'queue-ok'; queueLength: number }
  | { type: 'dry-run-item'; key: string; kind: WatchItemKind; status: 'ready' | 'settling' | 'waiting-for-marker' | 'done' | 'failed'; output: string }
  | { type: 'stream'; key: string; event: Record<string, unknown> }
  | { type: 'poll-error'; error: string; consecutive: number }
  | { type: 'watch-stopped'; processed: number; adopted: number; failed: number; interrupted: boolean };

export interface WatchOptions {
  /** Folder or s3://bucket/prefix to watch. */
  input: string;
  /** Folder or s3://bucket/prefix for outputs and the state; never the input or inside it. */
  out: string;
  /** Local model folder (loaded once). */
  modelDir: string;
  /** How long a signature must stay unchanged (default 2000 ms). */
  settleMs?: number;
  /** Between polls (default 500 ms). */
  pollMs?: number;
  /** Completeness marker suffix (e.g. '.done'); without it, settling decides. */
  marker?: string;
  /** Items admitted and not finished, at most (default 16). */
  maxQueue?: number;
  /** Process what is (or becomes, by settling) complete, then return. */
  once?: boolean;
  /** List what would be processed; write nothing, load no network. */
  dryRun?: boolean;
  /** Replace outputs this watch did not write. */
  overwrite?: boolean;
  outputType?: OutputType;
  tta?: boolean;
  tileShape?: number[];
  /** Memory bound of Zarr items (denoiseUrl; default 2 GiB). */
  maxMemoryBytes?: number;
  /** Inference engine and device (engines/select.ts); default auto. */
  engine?: EngineRequest;
  /** Channel of multi-channel OME-Zarr items. */
  channel?: number;
  s3?: S3Settings;
  /** Stop: take nothing new, let the item in flight finish. */
  signal?: AbortSignal;
  /** Abandon the item in flight (at its next tile or chunk); it stays 'started' and is redone or resumed later. */
  abandon?: AbortSignal;
  onEvent?: (event: WatchEvent) => void;
}

export interface WatchResult {
  processed: number;
  adopted: number;
  failed: number;
  /** Stopped by `signal` (items may be left for the next run). */
  interrupted: boolean;
  /** Dry run: the items that would be processed now. */
  ready?: string[];
}

export interface WatchHandle {
  result: Promise<WatchResult>;
  /** Resolves when the state written so far is stored (for a process about to exit). */
  flush(): Promise<void>;
}

// ---------------------------------------------------------------------------------------------
// Sources: what is in the watched place

interface ListedEntry {
  key: string;
  signature: ItemSignature;
}

interface Scan {
  /** Image files by key. */
  files: ListedEntry[];
  /** Zarr roots (`.zarr` folders or prefixes); signature only where `detail` asked for it. */
  zarrs: ListedEntry[];
  /** Every non-hidden file key (markers are looked up here). */
  names: Set<string>;
}

interface WatchSource {
  readonly url: string;
  /** A listed object is whole (S3): it is complete on sight. */
  readonly atomicObjects: boolean;
  scan(detail: (zarrKey: string) => boolean): Promise<Scan>;
  urlOf(key: string): string;
  /** A local file with the item's bytes (downloaded for S3), removed by `release` where it is a copy. */
  localCopy(key: string): Promise<{ file: string; release: () => Promise<void> }>;
  /** The item's signature now, where cheap to learn (local files); null otherwise. */
  currentSignature(key: string): Promise<ItemSignature | null>;
  /** The store of a Zarr item (its metadata is read every poll: shares this source's connections, needs no closing). */
  zarrStore(key: string): ByteStore;
  close(): Promise<void>;
}

function isMissing(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException)?.code;
  return code === 'ENOENT' || code === 'ENOTDIR';
}

const isZarrName = (name: string): boolean => /\.zarr$/i.test(name);

class LocalSource implements WatchSource {
  readonly atomicObjects = false;
  readonly root: string;
  constructor(readonly url: string) {
    this.root = path.resolve(url);
  }

  urlOf(key: string): string {
    return path.join(this.root, ...key.split('/'));
  }

  async scan(detail: (zarrKey: string) => boolean): Promise<Scan> {
    const scan: Scan = { files: [], zarrs: [], names: new Set() };
    const visit = async (dir: string, prefix: string): Promise<void> => {
      let entries;
      try {
        entries = await fs.readdir(dir, { withFileTypes: true });
      } catch (err) {
        if (isMissing(err)) return;
        throw new InputError(dir, `cannot be listed: ${(err as Error).message}`, { cause: err });
      }
      entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
      for (const entry of entries) {
        if (entry.name.startsWith('.')) continue;
        const key = prefix + entry.name;
        const full = path.join(dir, entry.name);
        if (entry.isDirectory()) {
          if (isZarrName(entry.name)) scan.zarrs.push({ key, signature: detail(key) ? await folderSignature(full) : { size: 0, mtimeMs: null } });
          else await visit(full, key + '/');
        } else if (entry.isFile()) {
          scan.names.add(key);
          if (!isSupportedImage(entry.name)) continue;
          const signature = await fileSignature(full);
          if (signature) scan.files.push({ key, signature });
        }
      }
    };
    await visit(this.root, '');
    return scan;
  }

  async localCopy(key: string): Promise<{ file: string; release: () => Promise<void> }> {
    return { file: this.urlOf(key), release: async () => undefined };
  }

  currentSignature(key: string): Promise<ItemSignature | null> {
    return fileSignature(this.urlOf(key));
  }

  zarrStore(key: string): ByteStore {
    return new FileSystemStore(this.urlOf(key));
  }

  async close(): Promise<void> {}
}

async function fileSignature(file: string): Promise<ItemSignature | null> {
  try {
    const stat = await fs.stat(file);
    return { size: stat.size, mtimeMs: stat.mtimeMs };
  } catch (err) {
    if (isMissing(err)) return null; // Gone between listing and stat (renamed by its writer).
    throw err;
  }
}

/** Files, bytes and newest mtime of everything under `dir`, hidden temp files included (they mean: being written). */
async function folderSignature(dir: string): Promise<ItemSignature> {
  const signature = { size: 0, mtimeMs: 0, files: 0 };
  const walk = async (d: string): Promise<void> => {
    let entries;
    try {
      entries = await fs.readdir(d, { withFileTypes: true });
    } catch (err) {
      if (isMissing(err)) return;
      throw err;
    }
    for (const entry of entries) {
      const full = path.join(d, entry.name);
      if (entry.isDirectory()) await walk(full);
      else if (entry.isFile()) {
        const s = await fileSignature(full);
        if (!s) continue;
        signature.files++;
        signature.size += s.size;
        signature.mtimeMs = Math.max(signature.mtimeMs, s.mtimeMs ?? 0);
      }
    }
  };
  await walk(dir);
  return signature;
}

class S3Source implements WatchSource {
  readonly atomicObjects = true;
  private readonly client;
  private readonly bucket: string;
  private readonly prefix: string;
  private readonly store: ByteStore;
  constructor(
    readonly url: string,
    private readonly s3?: S3Settings,
  ) {
    const { bucket, prefix } = parseS3Url(url);
    this.bucket = bucket;
    this.prefix = prefix;
    this.client = createS3Client(s3);
    this.store = new S3Store(url, s3, this.client);
  }

  urlOf(key: string): string {
    return `s3://${this.bucket}/${this.prefix ? `${this.prefix}/` : ''}${key}`;
  }

  async scan(): Promise<Scan> {
    const scan: Scan = { files: [], zarrs: [], names: new Set() };
    const root = this.prefix ? `${this.prefix}/` : '';
    const zarrs = new Map<string, Required<Pick<ItemSignature, 'size' | 'files'>> & { mtimeMs: number }>();
    let ContinuationToken: string | undefined;
    do {
      let page;
      try {
        page = await this.client.send(new ListObjectsV2Command({ Bucket: this.bucket, Prefix: root, ContinuationToken }));
      } catch (err) {
        throw new InputError(this.url, `cannot be listed: ${(err as Error).message}`, { cause: err });
      }
      for (const object of page.Contents ?? []) {
        if (object.Key === undefined) continue;
        const key = object.Key.slice(root.length);
        const parts = key.split('/');
        const size = object.Size ?? 0;
        const mtimeMs = object.LastModified ? object.LastModified.getTime() : 0;
        const zarrAt = parts.findIndex((p, i) => i < parts.length - 1 && isZarrName(p));
        if (zarrAt >= 0) {
          const zarrKey = parts.slice(0, zarrAt + 1).join('/');
          if (parts.slice(0, zarrAt + 1).some((p) => p.startsWith('.'))) continue;
          const z = zarrs.get(zarrKey) ?? { size: 0, files: 0, mtimeMs: 0 };
          z.size += size;
          z.files++;
          z.mtimeMs = Math.max(z.mtimeMs, mtimeMs);
          zarrs.set(zarrKey, z);
          continue;
        }
        if (parts.some((p) => p.startsWith('.') || p === '')) continue;
        scan.names.add(key);
        if (isSupportedImage(key)) scan.files.push({ key, signature: { size, mtimeMs, ...(object.ETag ? { etag: object.ETag } : {}) } });
      }
      ContinuationToken = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (ContinuationToken);
    for (const [key, signature] of zarrs) scan.zarrs.push({ key, signature });
    return scan;
  }

  async localCopy(key: string): Promise<{ file: string; release: () => Promise<void> }> {
    const bytes = await this.store.get('/' + key);
    if (!bytes) throw new InputError(this.urlOf(key), 'does not exist (removed after it was listed)');
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'blindspot-watch-'));
    const file = path.join(dir, path.posix.basename(key));
    await fs.writeFile(file, bytes);
    return { file, release: () => fs.rm(dir, { recursive: true, force: true }) };
  }

  async currentSignature(): Promise<ItemSignature | null> {
    return null; // Objects do not change in place: a new PUT is a new listing entry.
  }

  zarrStore(key: string): ByteStore {
    return new S3Store(this.urlOf(key), this.s3, this.client);
  }

  async close(): Promise<void> {
    // One client serves the listing, the object reads and the Zarr metadata.
    this.client.destroy();
  }
}

function openSource(url: string, s3?: S3Settings): WatchSource {
  return isS3Url(url) ? new S3Source(url, s3) : new LocalSource(url);
}

// ---------------------------------------------------------------------------------------------
// Sinks: where outputs go

interface WatchSink {
  readonly url: string;
  /** Byte store at the output root (state, and S3 outputs). */
  readonly store: ByteStore;
  urlOf(rel: string): string;
  exists(rel: string): Promise<boolean>;
  /** Stores an image under `rel` atomically, replacing what is there. */
  writeImage(rel: string, volume: Volume, sampleType: SampleType): Promise<void>;
  /** Removes what a killed watcher left half-written. */
  cleanUp(): Promise<void>;
  close(): Promise<void>;
}

let stagedCount = 0;

class LocalSink implements WatchSink {
  readonly store: ByteStore;
  readonly root: string;
  constructor(readonly url: string) {
    this.root = path.resolve(url);
    this.store = openByteStore(url);
  }
  urlOf(rel: string): string {
    return path.join(this.root, ...rel.split('/'));
  }
  async exists(rel: string): Promise<boolean> {
    try {
      await fs.stat(this.urlOf(rel));
      return true;
    } catch (err) {
      if (isMissing(err)) return false;
      throw err;
    }
  }
  async writeImage(rel: string, volume: Volume, sampleType: SampleType): Promise<void> {
    // Encoded under a staging name (same filesystem), then renamed: readers see no output or a whole one.
    const staging = path.join(this.root, STAGING_DIR);
    await fs.mkdir(staging, { recursive: true });
    const staged = path.join(staging, `${process.pid}-${stagedCount++}-${path.posix.basename(rel)}`);
    await writeImage(staged, volume, { sampleType, overwrite: true });
    const target = this.urlOf(rel);
    await fs.mkdir(path.dirname(target), { recursive: true });
    try {
      await fs.rename(staged, target);
    } catch (err) {
      await fs.rm(staged, { force: true });
      throw new OutputError(target, `could not be written: ${(err as Error).message}`, { cause: err });
    }
  }
  async cleanUp(): Promise<void> {
    await fs.rm(path.join(this.root, STAGING_DIR), { recursive: true, force: true });
    await this.store.cleanUpInterruptedWrites();
  }
  async close(): Promise<void> {}
}

class S3Sink implements WatchSink {
  readonly store: ByteStore;
  constructor(
    readonly url: string,
    s3?: S3Settings,
  ) {
    this.store = openByteStore(url, s3);
  }
  urlOf(rel: string): string {
    return `${this.url.replace(/\/+$/, '')}/${rel}`;
  }
  async exists(rel: string): Promise<boolean> {
    return (await this.store.getRange('/' + rel, { offset: 0, length: 1 })) !== undefined;
  }
  async writeImage(rel: string, volume: Volume, sampleType: SampleType): Promise<void> {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'blindspot-watch-out-'));
    try {
      const staged = path.join(dir, path.posix.basename(rel));
      await writeImage(staged, volume, { sampleType, overwrite: true });
      // One PUT (or a completed multipart upload): the object appears whole or not at all.
      await this.store.set('/' + rel, new Uint8Array(await fs.readFile(staged)));
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  }
  async cleanUp(): Promise<void> {
    await this.store.cleanUpInterruptedWrites();
  }
  async close(): Promise<void> {
    await this.store.close?.();
  }
}

function openSink(url: string, s3?: S3Settings): WatchSink {
  return isS3Url(url) ? new S3Sink(url, s3) : new LocalSink(url);
}

// ---------------------------------------------------------------------------------------------
// State

function sameSignature(a: ItemSignature, b: ItemSignature): boolean {
  return a.size === b.size && a.mtimeMs === b.mtimeMs && a.etag === b.etag && a.files === b.files;
}

function signatureText(s: ItemSignature): string {
  return JSON.stringify([s.size, s.mtimeMs, s.etag ?? null, s.files ?? null]);
}

const JOURNAL_PREFIX = '/.blindspot-watch/journal/';
/** Journal entries between snapshots: bounds both the journal's length and how often the whole state is rewritten. */
const COMPACT_EVERY = 256;

function journalKey(seq: number): string {
  return `${JOURNAL_PREFIX}${String(seq).padStart(12, '0')}.json`;
}

function journalSeqOf(key: string): number | null {
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
class WatchStateStore {
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
class StateWriteError extends OutputError {}

/** The item in flight was abandoned (abandon signal). */
class Abandoned extends Error {}

/** The item's bytes could not be decoded (maybe not complete yet). */
class DecodeFailure extends Error {
  constructor(readonly error: InputError | Error) {
    super(error.message);
  }
}

// ---------------------------------------------------------------------------------------------
// The loop

interface Tracked {
  kind: WatchItemKind;
  signature: ItemSignature;
  firstSeenMs: number;
  stableSinceMs: number;
  /** Signature at the last decode failure (a second failure with it is final). */
  failedSignature?: string;
  /** Counted as an arrival (for the rate estimate). */
  arrived: boolean;
}

interface WatchItem {
  key: string;
  kind: WatchItemKind;
  signature: ItemSignature;
  /** The Zarr of a Zarr item or time point. */
  zarrKey?: string;
  time?: number;
  output: string;
  arrivedAtMs: number;
  admittedAtMs: number;
}

/** Whether a Zarr (any version, array or group) is stored at `rel` under the store's root. */
async function zarrExists(store: ByteStore, rel: string): Promise<boolean> {
  for (const name of ['zarr.json', '.zarray', '.zgroup', '.zattrs']) if ((await store.get(`/${rel}/${name}`)) !== undefined) return true;
  return false;
}

const TIMEPOINT_SIGNATURE: ItemSignature = { size: 0, mtimeMs: null };

function timepointKey(zarrKey: string, t: number): string {
  return `${zarrKey}#t=${t}`;
}

/** Output (relative to --out) of an item key. */
export function watchOutputFor(key: string, outputType: OutputType): string {
  const time = /^(.*\.zarr)#t=(\d+)$/i.exec(key);
  if (time) return `${time[1].replace(/\.zarr$/i, '')}.t${time[2]}.zarr`;
  if (isZarrName(key)) return key;
  const dir = path.posix.dirname(key);
  return path.posix.relative('.', outputPathFor(key, dir === '.' ? '' : dir, outputType).split(path.sep).join('/'));
}

/** Extent of the time axis of an OME-Zarr (null: no t axis); undefined while its metadata is not readable yet. */
async function timeExtent(store: ByteStore): Promise<number | null | undefined> {
  try {
    const meta = await readOmeMetadata(store);
    if (!meta) return null;
    const dataset = meta.multiscale.datasets?.[0];
    if (!dataset?.path) return null;
    const spec = await readZarrArraySpec(store, dataset.path);
    if (!spec) return undefined;
    const axes = ngffAxes(meta.multiscale, spec.shape.length);
    const t = axes.findIndex((a) => a.type === 'time');
    return t < 0 ? null : spec.shape[t];
  } catch {
    return undefined; // Half-written metadata: look again on the next poll.
  }
}

/** Starts watching; `result` resolves when the watch ends (once, dry run, or stopped by `signal`). */
export function startWatch(opts: WatchOptions): WatchHandle {
  let stateStore: WatchStateStore | null = null;
  const result = runWatchLoop(opts, (s) => {
    stateStore = s;
  });
  return {
    result,
    flush: async () => {
      const s = stateStore as WatchStateStore | null;
      if (s) await s.settled();
    },
  };
}

/** Watches until `once` finds nothing left, or `signal` stops it. */
export function watch(opts: WatchOptions): Promise<WatchResult> {
  return startWatch(opts).result;
}

async function runWatchLoop(opts: WatchOptions, exposeState: (s: WatchStateStore) => void): Promise<WatchResult> {
  const settleMs = opts.settleMs ?? 2000;
  const pollMs = opts.pollMs ?? 500;
  const maxQueue = opts.maxQueue ?? 16;
  const marker = opts.marker ?? null;
  const outputType = opts.outputType ?? 'float32';
  if (!(settleMs >= 0) || !(pollMs > 0)) throw new UsageError('settle and poll times must be positive numbers of milliseconds');
  if (!Number.isInteger(maxQueue) || maxQueue < 1) throw new UsageError(`the queue must hold at least 1 item, got ${maxQueue}`);
  if (marker !== null && (marker === '' || marker.includes('/'))) throw new UsageError(`a marker is a file-name suffix like '.done', got '${marker}'`);
  assertOutputIsNotInput(opts.input, opts.out);
  const emit = (e: WatchEvent): void => opts.onEvent?.(e);

  const source = openSource(opts.input, opts.s3);
  const sink = openSink(opts.out, opts.s3);
  let model: tfl.LayersModel | null = null;
  let engine: InferenceEngine | null = null;
  try {
    if (!isS3Url(opts.input)) {
      const stat = await fs.stat(opts.input).catch(() => null);
      if (!stat?.isDirectory()) throw new InputError(opts.input, 'is not a folder to watch (give a folder or an s3://bucket/prefix)');
    }
    if (opts.dryRun) {
      await readManifest(opts.modelDir);
      const previous = await WatchStateStore.load(sink.store);
      return await dryRun(opts, source, previous?.state.items ?? {}, { settleMs, marker, outputType }, emit);
    }

    const loaded = await loadModelFolder(opts.modelDir);
    model = loaded.model;
    const manifest: ModelManifest = loaded.manifest;
    engine = await openModelEngine(opts.engine ?? {}, { modelDir: opts.modelDir, model, manifest, output: 'denoised' });
    emit(engineEvent(engine));
    const modelHash = await modelFolderHash(opts.modelDir);
    const stored = await WatchStateStore.load(sink.store);
    const previous = stored?.state ?? null;
    if (previous && previous.model.sha256 !== modelHash) {
      throw new OutputError(opts.out, `holds the outputs of another model (${previous.model.folder}); watch into another --out, or move its .blindspot-watch folder away`);
    }
    const input = isS3Url(opts.input) ? opts.input.replace(/\/+$/, '') : path.resolve(opts.input);
    if (previous && previous.input !== input) {
      throw new OutputError(opts.out, `holds the outputs of a watch on ${previous.input}, not ${input}; watch into another --out`);
    }
    const state = new WatchStateStore(
      sink.store,
      previous ?? {
        format: 'blindspot-watch-state',
        formatVersion: 1,
        input,
        model: { folder: path.resolve(opts.modelDir), sha256: modelHash },
        items: {},
        updatedAt: new Date().toISOString(),
      },
      stored?.seq ?? 0,
    );
    exposeState(state);
    await sink.cleanUp();
    await state.snapshot();
    const counts = Object.values(state.state.items).reduce((c, i) => ({ done: c.done + (i.status === 'done' ? 1 : 0), failed: c.failed + (i.status === 'failed' ? 1 : 0) }), { done: 0, failed: 0 });
    emit({ type: 'watch-start', input: opts.input, out: opts.out, settleMs, pollMs, maxQueue, marker, ...counts });

    const persist = async (key: string, item: WatchStateItem): Promise<void> => {
      try {
        await state.set(key, item);
      } catch (err) {
        throw new StateWriteError(opts.out, `the watch state cannot be written: ${(err as Error).message}`, { cause: err });
      }
    };

    const tracked = new Map<string, Tracked>();
    const queued = new Set<string>();
    let inFlight: string | null = null;
    const changedReported = new Set<string>();
    const outputOwners = new Map<string, string>();
    for (const [key, item] of Object.entries(state.state.items)) outputOwners.set(item.output, key);
    const totals = { processed: 0, adopted: 0, failed: 0 };
    // Rate estimate: recent arrivals (ms) and processing times (s).
    const arrivals: number[] = [];
    const durations: number[] = [];
    let warned = false;
    const pending = (): number => queued.size + (inFlight ? 1 : 0);
    const itemsPerSecond = (): number | null => (durations.length ? durations.length / durations.reduce((a, b) => a + b, 0) : null);
    const arrivalsPerSecond = (now: number): number | null => {
      const recent = arrivals.filter((t) => now - t < 300_000);
      if (recent.length < 3) return null;
      const span = (recent[recent.length - 1] - recent[0]) / 1000;
      return span > 0 ? (recent.length - 1) / span : null;
    };
    const stopped = (): boolean => opts.signal?.aborted === true;

    /** One poll: list, update what is settling, admit what is complete into the queue's room. */
    let listingFailures = 0;
    const discover = async (): Promise<{ admitted: WatchItem[]; idle: boolean }> => {
      let scan: Scan;
      try {
        scan = await source.scan((key) => state.state.items[key]?.status !== 'done');
        listingFailures = 0;
      } catch (err) {
        // A listing that fails now (network, a folder being moved) may work on the next poll; many in a row end the watch.
        if (++listingFailures >= MAX_LISTING_FAILURES) throw err;
        emit({ type: 'poll-error', error: (err as Error).message, consecutive: listingFailures });
        return { admitted: [], idle: false };
      }
      const now = Date.now();
      const considered = new Set<string>();
      const candidates: WatchItem[] = [];
      let settling = 0;
      const hasMarker = (key: string): boolean => marker !== null && scan.names.has(key + marker);

      /** `activity`: what must stay unchanged to settle, when not the item's own signature (a time point: its Zarr's). */
      const consider = (
        key: string,
        kind: WatchItemKind,
        signature: ItemSignature,
        complete: (t: Tracked) => boolean,
        extra: Partial<WatchItem> = {},
        activity: ItemSignature = signature,
      ): void => {
        considered.add(key);
        const record = state.state.items[key];
        if (record?.status === 'done') {
          if (kind === 'file' && !sameSignature(record.signature, signature) && !changedReported.has(key)) {
            changedReported.add(key);
            emit({ type: 'item-changed', key, kind, output: record.output });
          }
          return;
        }
        if (record?.status === 'failed' && sameSignature(record.signature, signature)) return;
        if (queued.has(key) || inFlight === key) return;
        let t = tracked.get(key);
        if (!t) {
          t = { kind, signature: activity, firstSeenMs: now, stableSinceMs: Math.min(now, activity.mtimeMs ?? now), arrived: false };
          tracked.set(key, t);
          emit({ type: 'item-seen', key, kind });
        } else if (!sameSignature(t.signature, activity)) {
          t.signature = activity;
          t.stableSinceMs = now;
        }
        if (!complete(t)) {
          // With markers, only the writer can complete an item: waiting does not, so `once` need not wait.
          if (marker === null) settling++;
          return;
        }
        if (!t.arrived) {
          t.arrived = true;
          arrivals.push(now);
          if (arrivals.length > 20) arrivals.shift();
        }
        candidates.push({
          key,
          kind,
          signature,
          output: watchOutputFor(key, outputType),
          arrivedAtMs: kind === 'timepoint' ? t.firstSeenMs : Math.min(signature.mtimeMs ?? t.firstSeenMs, now),
          admittedAtMs: now,
          ...extra,
        });
      };
      const settled = (t: Tracked): boolean => now - t.stableSinceMs >= settleMs;

      for (const file of scan.files) {
        consider(file.key, 'file', file.signature, (t) => (marker !== null ? hasMarker(file.key) : source.atomicObjects || settled(t)));
      }
      for (const zarr of scan.zarrs) {
        if (state.state.items[zarr.key]?.status === 'done') continue;
        const extent = await timeExtent(source.zarrStore(zarr.key));
        if (extent === undefined) {
          if (marker === null) settling++;
          continue;
        }
        if (extent === null) {
          consider(zarr.key, 'zarr', zarr.signature, (t) => (marker !== null ? hasMarker(zarr.key) : settled(t)), { zarrKey: zarr.key });
          continue;
        }
        for (let time = 0; time < extent; time++) {
          const key = timepointKey(zarr.key, time);
          const complete = (t: Tracked): boolean =>
            marker !== null ? hasMarker(zarr.key) || hasMarker(`${zarr.key}.t${time}`) : time < extent - 1 || settled(t);
          // A time point's own signature is constant: it is one item however its Zarr grows (a failed one stays failed).
          consider(key, 'timepoint', TIMEPOINT_SIGNATURE, complete, { zarrKey: zarr.key, time }, zarr.signature);
        }
      }

      // Items gone before they were complete (moved away, deleted) are forgotten.
      for (const key of tracked.keys()) if (!considered.has(key) && !queued.has(key) && inFlight !== key) tracked.delete(key);
      candidates.sort((a, b) => a.arrivedAtMs - b.arrivedAtMs || (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
      const room = stopped() ? 0 : Math.max(0, maxQueue - pending());
      const admitted = candidates.slice(0, room);
      for (const item of admitted) queued.add(item.key);
      const waiting = candidates.length - admitted.length;
      if (!warned && !stopped()) {
        const rate = arrivalsPerSecond(now);
        const speed = itemsPerSecond();
        const reason = waiting > 0 ? 'queue-full' : rate !== null && speed !== null && rate > speed && pending() >= 2 ? 'rate' : null;
        if (reason) {
          warned = true;
          emit({ type: 'queue-warning', reason, queueLength: pending(), maxQueue, waiting, arrivalsPerSecond: rate, itemsPerSecond: speed });
        }
      }
      return { admitted, idle: candidates.length === 0 && settling === 0 && pending() === 0 };
    };

    const fail = async (item: WatchItem, err: unknown): Promise<void> => {
      if (err instanceof StateWriteError) throw err;
      if (err instanceof Abandoned) {
        emit({ type: 'item-abandoned', key: item.key, kind: item.kind });
        return;
      }
      const message = err instanceof DecodeFailure || err instanceof BlindspotError ? err.message : `unexpected error: ${(err as Error)?.message ?? String(err)}`;
      const t = tracked.get(item.key);
      const signature = signatureText(item.signature);
      const finalNow = marker !== null || source.atomicObjects || item.kind !== 'file';
      if (err instanceof DecodeFailure && !finalNow && t && t.failedSignature !== signature) {
        // Maybe not complete yet: try again once it has been unchanged for another settle period.
        t.failedSignature = signature;
        t.stableSinceMs = Date.now();
        emit({ type: 'item-retry', key: item.key, kind: item.kind, error: message });
        return;
      }
      await persist(item.key, { kind: item.kind, status: 'failed', signature: item.signature, output: sink.urlOf(item.output), finishedAt: new Date().toISOString(), error: message });
      tracked.delete(item.key);
      totals.failed++;
      emit({ type: 'item-failed', key: item.key, kind: item.kind, error: message });
    };

    const finish = async (item: WatchItem, startedAt: string, t0: number, voxels: number | null, megavoxelsPerSecond: number | null): Promise<void> => {
      const writtenAt = Date.now();
      const seconds = (performance.now() - t0) / 1000;
      const latencySeconds = (writtenAt - item.arrivedAtMs) / 1000;
      await persist(item.key, {
        kind: item.kind,
        status: 'done',
        signature: item.signature,
        output: sink.urlOf(item.output),
        startedAt,
        finishedAt: new Date(writtenAt).toISOString(),
        seconds,
        latencySeconds,
      });
      tracked.delete(item.key);
      durations.push(seconds);
      if (durations.length > 10) durations.shift();
      totals.processed++;
      const speed = itemsPerSecond();
      emit({
        type: 'item-done',
        key: item.key,
        kind: item.kind,
        output: sink.urlOf(item.output),
        seconds,
        latencySeconds,
        megapixelsPerSecond: megavoxelsPerSecond ?? (voxels ?? 0) / 1e6 / seconds,
        queueLength: queued.size,
        queueEtaSeconds: speed ? queued.size / speed : null,
      });
    };

    const checkAbandon = (): void => {
      if (opts.abandon?.aborted) throw new Abandoned('abandoned');
    };

    const processFile = async (item: WatchItem, startedAt: string, t0: number): Promise<void> => {
      const copy = await source.localCopy(item.key);
      let volume: Volume;
      try {
        try {
          volume = await readImage(copy.file);
        } catch (err) {
          const problem = err instanceof InputError ? err.problem : (err as Error).message;
          throw new DecodeFailure(new InputError(source.urlOf(item.key), `cannot be decoded: ${problem}`, { cause: err }));
        }
        const now = await source.currentSignature(item.key);
        if (now && !sameSignature(now, item.signature)) {
          throw new DecodeFailure(new InputError(source.urlOf(item.key), 'changed while it was being read (its writer is not done)'));
        }
      } finally {
        await copy.release();
      }
      if (volume.shape.length !== manifest.network.dims) {
        throw new InputError(source.urlOf(item.key), `is ${volume.shape.length}D but the model ${opts.modelDir} was trained on ${manifest.network.dims}D data`);
      }
      if (!model) throw new Error('no model');
      const denoised = await denoiseVolume(model, manifest, volume, { tta: opts.tta, tileShape: opts.tileShape, onProgress: checkAbandon, engine: engine ?? undefined });
      checkAbandon();
      await sink.writeImage(item.output, denoised, outputType === 'input' ? volume.sampleType : 'float32');
      await finish(item, startedAt, t0, volume.data.length, null);
    };

    const processZarr = async (item: WatchItem, startedAt: string, t0: number): Promise<void> => {
      let megavoxelsPerSecond: number | null = null;
      const result = await denoiseUrl({
        input: source.urlOf(item.zarrKey ?? item.key),
        out: sink.urlOf(item.output),
        modelDir: opts.modelDir,
        maxMemoryBytes: opts.maxMemoryBytes ?? 2 * 2 ** 30,
        s3: opts.s3,
        channel: opts.channel,
        time: item.time,
        // A 'started' item's output is continued (its finished chunks verified and kept).
        resume: true,
        tta: opts.tta,
        outputType,
        engine: opts.engine,
        command: ['blindspot', 'watch', opts.input, '--model', opts.modelDir, '--out', opts.out],
        signal: opts.abandon,
        onEvent: (e) => {
          if (e.type === 'stream-done') megavoxelsPerSecond = e.megavoxelsPerSecond;
          if (e.type === 'stream-start' || e.type === 'stream-done') emit({ type: 'stream', key: item.key, event: { ...e } });
        },
      });
      if (result.interrupted) throw new Abandoned('abandoned');
      await finish(item, startedAt, t0, null, megavoxelsPerSecond);
    };

    const processItem = async (item: WatchItem): Promise<void> => {
      queued.delete(item.key);
      // Stopped: what is queued stays undone and is found again by the next run.
      if (stopped()) return;
      inFlight = item.key;
      try {
        const prior = state.state.items[item.key];
        const outputUrl = sink.urlOf(item.output);
        const owner = outputOwners.get(outputUrl);
        if (owner !== undefined && owner !== item.key) {
          throw new OutputError(outputUrl, `would be written by both ${owner} and ${item.key} (same name); watch them into separate --out folders`);
        }
        if (item.kind === 'file' && (await sink.exists(item.output))) {
          if (prior?.status === 'started' && sameSignature(prior.signature, item.signature)) {
            // Killed between storing the output and recording it: the output is whole (atomic), keep it.
            await persist(item.key, { ...prior, status: 'done', finishedAt: new Date().toISOString() });
            tracked.delete(item.key);
            totals.adopted++;
            emit({ type: 'item-adopted', key: item.key, kind: item.kind, output: outputUrl });
            return;
          }
          if (!prior && !opts.overwrite) throw new OutputError(outputUrl, 'exists already and was not written by this watch; remove it, choose another --out, or pass --overwrite');
        }
        if (item.kind !== 'file' && !prior && (await zarrExists(sink.store, item.output))) {
          // Resuming into it would overwrite its chunks (or mix two runs): only what this watch started is continued.
          throw new OutputError(outputUrl, 'exists already and was not written by this watch; remove it or choose another --out');
        }
        const startedAt = new Date().toISOString();
        outputOwners.set(outputUrl, item.key);
        await persist(item.key, { kind: item.kind, status: 'started', signature: item.signature, output: outputUrl, startedAt });
        emit({ type: 'item-start', key: item.key, kind: item.kind, output: outputUrl, waitedSeconds: (Date.now() - item.arrivedAtMs) / 1000, queueLength: queued.size });
        const t0 = performance.now();
        if (item.kind === 'file') await processFile(item, startedAt, t0);
        else await processZarr(item, startedAt, t0);
      } catch (err) {
        await fail(item, err);
      } finally {
        inFlight = null;
        if (warned && pending() === 0) {
          warned = false;
          emit({ type: 'queue-ok', queueLength: 0 });
        }
      }
    };

    const stop$: Observable<unknown> = opts.signal ? (opts.signal.aborted ? of(true) : fromEvent(opts.signal, 'abort').pipe(take(1))) : NEVER;
    // Polls run on their own clock, also while an item is being denoised, so settling and arrival
    // times are observed; the queue between them is bounded by admission (at most maxQueue pending).
    const polls$ = defer(() => discover()).pipe(
      repeat({ delay: () => timer(pollMs) }),
      takeWhile((poll) => !(opts.once && poll.idle)),
      takeUntil(stop$),
    );
    await lastValueFrom(
      polls$.pipe(
        mergeMap((poll) => from(poll.admitted)),
        // Concurrency 1: one model, one item at a time.
        concatMap((item) => defer(() => processItem(item))),
      ),
      { defaultValue: undefined },
    );
    await state.snapshot();
    const interrupted = stopped();
    emit({ type: 'watch-stopped', ...totals, interrupted });
    return { ...totals, interrupted };
  } finally {
    await engine?.dispose();
    model?.dispose();
    await source.close();
    await sink.close();
  }
}

/** One listing: what would be processed now, what is settling, what is done or failed. Writes nothing. */
async function dryRun(
  opts: WatchOptions,
  source: WatchSource,
  items: Record<string, WatchStateItem>,
  o: { settleMs: number; marker: string | null; outputType: OutputType },
  emit: (e: WatchEvent) => void,
): Promise<WatchResult> {
  const scan = await source.scan((key) => items[key]?.status !== 'done');
  const now = Date.now();
  const ready: string[] = [];
  const report = (key: string, kind: WatchItemKind, signature: ItemSignature, complete: boolean): void => {
    const record = items[key];
    const status =
      record?.status === 'done'
        ? 'done'
        : record?.status === 'failed' && sameSignature(record.signature, signature)
          ? 'failed'
          : complete
            ? 'ready'
            : o.marker !== null
              ? 'waiting-for-marker'
              : 'settling';
    if (status === 'ready') ready.push(key);
    emit({ type: 'dry-run-item', key, kind, status, output: watchOutputFor(key, o.outputType) });
  };
  const hasMarker = (key: string): boolean => o.marker !== null && scan.names.has(key + o.marker);
  // One look: complete means marked, whole (S3), or last modified at least settleMs ago.
  const quiet = (s: ItemSignature): boolean => s.mtimeMs !== null && now - s.mtimeMs >= o.settleMs;
  for (const file of scan.files) report(file.key, 'file', file.signature, o.marker !== null ? hasMarker(file.key) : source.atomicObjects || quiet(file.signature));
  for (const zarr of scan.zarrs) {
    const extent = items[zarr.key]?.status === 'done' ? null : await timeExtent(source.zarrStore(zarr.key));
    if (extent === undefined) continue;
    if (extent === null) {
      report(zarr.key, 'zarr', zarr.signature, o.marker !== null ? hasMarker(zarr.key) : quiet(zarr.signature));
      continue;
    }
    for (let t = 0; t < extent; t++) {
      const complete = o.marker !== null ? hasMarker(zarr.key) || hasMarker(`${zarr.key}.t${t}`) : t < extent - 1 || quiet(zarr.signature);
      report(timepointKey(zarr.key, t), 'timepoint', TIMEPOINT_SIGNATURE, complete);
    }
  }
  return { processed: 0, adopted: 0, failed: 0, interrupted: false, ready };
}
