/**
 * `watch --dry-run`: one listing of the watched source against the watch state, reporting each item
 * as ready, settling, waiting for its marker, done or failed, by the same completeness rules as the
 * watch loop (pipeline/watch.ts). Writes nothing.
 */
import type { OutputType } from './denoise.js';
import { type ItemSignature, type WatchItemKind, type WatchStateItem, sameSignature } from './watchState.js';
import type { WatchSource } from './watchSources.js';
import type { WatchEvent, WatchResult } from './watchOptions.js';
import { TIMEPOINT_SIGNATURE, timeExtent, timepointKey, watchOutputFor } from './watchItems.js';

/** One listing: what would be processed now, what is settling, what is done or failed. Writes nothing. */
export async function dryRun(
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
