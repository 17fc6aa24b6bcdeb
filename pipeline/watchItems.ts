/** The items of a watch: what is tracked per item, time points of a growing OME-Zarr, and where an item's output goes. */
import path from 'node:path';
import { outputPathFor, type OutputType } from './denoise.js';
import type { ByteStore } from '../storage/byteStore.js';
import { ngffAxes, readOmeMetadata } from '../storage/omeMetadata.js';
import { readZarrArraySpec } from '../storage/zarr.js';
import { type ItemSignature, type WatchItemKind } from './watchState.js';
import { isZarrName } from './watchSources.js';

export interface Tracked {
  kind: WatchItemKind;
  signature: ItemSignature;
  firstSeenMs: number;
  stableSinceMs: number;
  /** Signature at the last decode failure (a second failure with it is final). */
  failedSignature?: string;
  /** Counted as an arrival (for the rate estimate). */
  arrived: boolean;
}

export interface WatchItem {
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
export async function zarrExists(store: ByteStore, rel: string): Promise<boolean> {
  for (const name of ['zarr.json', '.zarray', '.zgroup', '.zattrs']) if ((await store.get(`/${rel}/${name}`)) !== undefined) return true;
  return false;
}

export const TIMEPOINT_SIGNATURE: ItemSignature = { size: 0, mtimeMs: null };

export function timepointKey(zarrKey: string, t: number): string {
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
export async function timeExtent(store: ByteStore): Promise<number | null | undefined> {
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
