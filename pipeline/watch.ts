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
import path from 'node:path';
import type * as tfl from '@tensorflow/tfjs-layers';
import { NEVER, type Observable, concatMap, defer, from, fromEvent, lastValueFrom, mergeMap, of, repeat, take, takeUntil, takeWhile, timer } from 'rxjs';
import { BlindspotError, InputError, OutputError, UsageError } from '../core/errors.js';
import type { Volume } from '../core/volume.js';
import { loadModelFolder, readManifest, type ModelManifest } from '../models/io.js';
import { denoiseVolume } from './denoise.js';
import { assertOutputIsNotInput, denoiseUrl, modelFolderHash } from './streamDenoise.js';
import { readImage } from '../storage/index.js';
import { isS3Url } from '../storage/s3.js';
import { type ItemSignature, type WatchItemKind, type WatchStateItem, WatchStateStore, sameSignature, signatureText, StateWriteError } from './watchState.js';
import { type Scan, type WatchSource, openSource } from './watchSources.js';
import { openSink } from './watchSinks.js';
import { dryRun } from './watchDryRun.js';
import { WatchRates } from './watchRates.js';
import type { WatchEvent, WatchHandle, WatchOptions, WatchResult } from './watchOptions.js';
import type { InferenceEngine } from '../engines/engine.js';
import { engineEvent, openModelEngine } from '../engines/modelEngine.js';
import { type Tracked, type WatchItem, TIMEPOINT_SIGNATURE, timeExtent, timepointKey, watchOutputFor, zarrExists } from './watchItems.js';

export { WATCH_STATE_KEY, readWatchState } from './watchState.js';
export type { ItemSignature, WatchItemKind, WatchState, WatchStateItem } from './watchState.js';
export type { WatchEvent, WatchHandle, WatchOptions, WatchResult } from './watchOptions.js';
export { watchOutputFor } from './watchItems.js';

/** Listings failing this many polls in a row end the watch (fewer are logged and retried). */
const MAX_LISTING_FAILURES = 10;

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
  await assertOutputIsNotInput(opts.input, opts.out);
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
      return await dryRun(source, previous?.state.items ?? {}, { settleMs, marker, outputType }, emit);
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
    const rates = new WatchRates();
    let warned = false;
    const pending = (): number => queued.size + (inFlight ? 1 : 0);
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
          rates.arrived(now);
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
        const rate = rates.arrivalsPerSecond(now);
        const speed = rates.itemsPerSecond();
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
      rates.processed(seconds);
      totals.processed++;
      const speed = rates.itemsPerSecond();
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
