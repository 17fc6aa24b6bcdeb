/**
 * OME-Zarr (NGFF) metadata: the subset of NGFF we read and write (multiscales, axes, coordinate
 * transformations, omero display window), read from a group's zarr.json (v0.5) or .zattrs (v0.4);
 * the group documents createOmeZarr writes, how an existing one is compared with them, and the
 * incomplete marker that keeps a failed run's output from passing for a result. storage/ome.ts opens
 * and writes the arrays.
 */
import { isDeepStrictEqual } from 'node:util';
import type { ByteStore } from './byteStore.js';
import { chunkGrid, type Axis, type ChunkedArrayReader, type Placement } from './chunked.js';
import { voxelCount } from '../core/volume.js';
import { parseMetadataJson } from './zarrCheck.js';
import { VERSION } from '../core/version.js';
import { unravel, type PyramidLevel } from './omePyramid.js';

export interface NgffAxis {
  name: string;
  type?: string;
  unit?: string;
}
export type NgffTransform = { type: 'scale'; scale: number[] } | { type: 'translation'; translation: number[] } | { type: 'identity' };
export interface NgffDataset {
  path: string;
  coordinateTransformations: NgffTransform[];
}
export interface NgffMultiscale {
  version?: string;
  name?: string;
  axes: NgffAxis[];
  datasets: NgffDataset[];
  coordinateTransformations?: NgffTransform[];
  type?: string;
  metadata?: Record<string, unknown>;
}
export interface OmeroWindow {
  start: number;
  end: number;
  min: number;
  max: number;
}

export interface OmeMetadata {
  ngffVersion: '0.4' | '0.5';
  multiscale: NgffMultiscale;
  /** The group's whole attributes document (v0.5: zarr.json attributes; v0.4: .zattrs). */
  attributes: Record<string, unknown>;
  omero?: { channels?: { window?: OmeroWindow; label?: string }[] } & Record<string, unknown>;
}

/** A metadata document's JSON (null-safe: undefined when the key is absent). */
export function decodeJson(bytes: Uint8Array | undefined, file = 'Zarr metadata'): Record<string, unknown> | undefined {
  if (!bytes) return undefined;
  return parseMetadataJson(bytes, file);
}

/** The OME metadata of the group at the store root, or null when it has none. */
export async function readOmeMetadata(store: ByteStore): Promise<OmeMetadata | null> {
  const v3 = decodeJson(await store.get('/zarr.json'), `${store.url}/zarr.json`);
  if (v3) {
    const attributes = (v3.attributes ?? {}) as Record<string, unknown>;
    const ome = attributes.ome as { version?: string; multiscales?: NgffMultiscale[]; omero?: OmeMetadata['omero'] } | undefined;
    const multiscales = ome?.multiscales ?? (attributes.multiscales as NgffMultiscale[] | undefined);
    if (!multiscales?.length) return null;
    return { ngffVersion: '0.5', multiscale: multiscales[0], attributes, omero: ome?.omero ?? (attributes.omero as OmeMetadata['omero']) };
  }
  const v2 = decodeJson(await store.get('/.zattrs'), `${store.url}/.zattrs`);
  const multiscales = v2?.multiscales as NgffMultiscale[] | undefined;
  if (!v2 || !multiscales?.length) return null;
  return { ngffVersion: '0.4', multiscale: multiscales[0], attributes: v2, omero: v2.omero as OmeMetadata['omero'] };
}

function axisType(axis: NgffAxis): Axis['type'] {
  if (axis.type === 'space' || axis.type === 'time' || axis.type === 'channel') return axis.type;
  if (axis.type === undefined) {
    if (['z', 'y', 'x'].includes(axis.name)) return 'space';
    if (axis.name === 't') return 'time';
    if (axis.name === 'c') return 'channel';
  }
  return 'other';
}

/** Axes of a multiscale; v0.3-style string axes are accepted too. */
export function ngffAxes(multiscale: NgffMultiscale, rank: number): Axis[] {
  const raw = (multiscale.axes ?? []) as (NgffAxis | string)[];
  const axes = raw.map((a) => (typeof a === 'string' ? { name: a } : a));
  if (axes.length !== rank) return [];
  return axes.map((a) => ({ name: a.name, type: axisType(a), ...(a.unit ? { unit: a.unit } : {}) }));
}

/** Composes dataset transforms then multiscale transforms into one scale + translation. */
export function levelPlacement(multiscale: NgffMultiscale, datasetIndex: number, rank: number): Placement {
  const scale = new Array<number>(rank).fill(1);
  const translation = new Array<number>(rank).fill(0);
  const apply = (transforms: NgffTransform[] | undefined): void => {
    for (const t of transforms ?? []) {
      if (t.type === 'scale') {
        for (let i = 0; i < rank; i++) {
          scale[i] *= t.scale[i];
          translation[i] *= t.scale[i];
        }
      } else if (t.type === 'translation') {
        for (let i = 0; i < rank; i++) translation[i] += t.translation[i];
      }
    }
  };
  apply(multiscale.datasets[datasetIndex]?.coordinateTransformations);
  apply(multiscale.coordinateTransformations);
  return { scale, translation };
}

/** The group attribute that marks an OME-Zarr whose run has not finished (see markIncomplete). */
export const INCOMPLETE_ATTRIBUTE = 'blindspot_incomplete';

const INCOMPLETE_NOTE =
  'this output is incomplete: a blindspot run is writing it, or failed or was stopped before it finished (chunks missing, no pyramid). Run the same command again (with --resume) to finish it, or remove it';

/** The attributes object of a group document (v0.5 zarr.json: its attributes; v0.4: .zattrs itself; .zgroup: none). */
export function groupAttributes(key: string, doc: Record<string, unknown>): Record<string, unknown> | null {
  if (key.endsWith('/zarr.json')) {
    if (!doc.attributes || typeof doc.attributes !== 'object') doc.attributes = {};
    return doc.attributes as Record<string, unknown>;
  }
  return key.endsWith('/.zattrs') ? doc : null;
}

/** Sets the incomplete marker in a group document (in place). */
export function setIncomplete(key: string, doc: Record<string, unknown>, reason?: string): void {
  const attributes = groupAttributes(key, doc);
  if (attributes) attributes[INCOMPLETE_ATTRIBUTE] = { note: INCOMPLETE_NOTE, ...(reason ? { failure: reason } : {}) };
}

/** Removes the incomplete marker from a group document (in place). */
export function clearIncomplete(key: string, doc: Record<string, unknown>): void {
  const attributes = groupAttributes(key, doc);
  if (attributes) delete attributes[INCOMPLETE_ATTRIBUTE];
}

/** The incomplete marker of an OME group's attributes, or null. */
export function incompleteMarker(attributes: Record<string, unknown> | undefined): { note: string; failure?: string } | null {
  const marker = attributes?.[INCOMPLETE_ATTRIBUTE];
  return marker && typeof marker === 'object' ? (marker as { note: string; failure?: string }) : null;
}

/** What the group documents record of an OME-Zarr being created (a subset of CreateOmeZarrOptions). */
export interface OmeGroupSettings {
  /** YX or ZYX. */
  shape: number[];
  axes: Axis[];
  ngffVersion?: '0.5' | '0.4';
  provenance?: Record<string, unknown>;
  name?: string;
}

function ngffAxisOf(a: Axis): NgffAxis {
  return { name: a.name, ...(a.type === 'other' ? {} : { type: a.type }), ...(a.unit ? { unit: a.unit } : {}) };
}

/**
 * A window every viewer accepts: finite numbers (JSON has no NaN; vizarr uses start/end as slider
 * limits) and end > start (napari refuses contrast limits that do not increase, napari PR #5036;
 * napari-ome-zarr passes window start/end as contrast_limits). A flat image's 0.1/99.9 percentiles
 * are equal, so the window is widened to min/max, or to one unit above start.
 */
export function displayableWindow(window: OmeroWindow): OmeroWindow {
  const finiteOr = (v: number, fallback: number): number => (Number.isFinite(v) ? v : fallback);
  let start = finiteOr(window.start, finiteOr(window.min, 0));
  let end = finiteOr(window.end, finiteOr(window.max, start + 1));
  if (!(end > start)) {
    start = Math.min(start, finiteOr(window.min, start));
    end = Math.max(end, finiteOr(window.max, end));
    if (!(end > start)) end = start + 1;
  }
  return { start, end, min: Math.min(finiteOr(window.min, start), start), max: Math.max(finiteOr(window.max, end), end) };
}

/** The omero block (display settings) of the single denoised channel. */
export function omeroOf(window: OmeroWindow, shape: readonly number[], version: '0.4' | '0.5'): Record<string, unknown> {
  return {
    ...(version === '0.4' ? { version: '0.4' } : {}),
    channels: [
      { active: true, coefficient: 1, color: 'FFFFFF', family: 'linear', inverted: false, label: 'denoised', window: displayableWindow(window) },
    ],
    rdefs: { defaultT: 0, defaultZ: shape.length === 3 ? Math.floor(shape[0] / 2) : 0, model: 'greyscale' },
  };
}

/** The group documents of an OME-Zarr (v0.5: zarr.json; v0.4: .zgroup and .zattrs), pyramid levels listed. */
export function groupDocuments(
  opts: OmeGroupSettings,
  levels: PyramidLevel[],
  window: OmeroWindow | undefined,
): { key: string; doc: Record<string, unknown> }[] {
  const version = opts.ngffVersion ?? '0.5';
  const multiscale: Record<string, unknown> = {
    ...(version === '0.4' ? { version: '0.4' } : {}),
    name: opts.name ?? 'denoised',
    axes: opts.axes.map(ngffAxisOf),
    datasets: levels.map((level, k) => ({
      path: String(k),
      coordinateTransformations: [
        { type: 'scale', scale: level.placement.scale.map(Number) },
        { type: 'translation', translation: level.placement.translation.map(Number) },
      ],
    })),
    type: 'mean',
    metadata: { description: 'mean of 2x2 blocks in y and x of the level below (z is not downsampled)', method: 'blindspot buildPyramid' },
  };
  const blindspot = { version: VERSION, ...(opts.provenance ?? {}) };
  if (version === '0.5') {
    const ome: Record<string, unknown> = { version: '0.5', multiscales: [multiscale] };
    if (window) ome.omero = omeroOf(window, opts.shape, version);
    return [{ key: '/zarr.json', doc: { zarr_format: 3, node_type: 'group', attributes: { ome, blindspot } } }];
  }
  const attrs: Record<string, unknown> = { multiscales: [multiscale] };
  if (window) attrs.omero = omeroOf(window, opts.shape, version);
  attrs.blindspot = blindspot;
  return [
    { key: '/.zgroup', doc: { zarr_format: 2 } },
    { key: '/.zattrs', doc: attrs },
  ];
}

/**
 * Existing group metadata matches what we would write, allowing what buildPyramid changes: a
 * computed window (when none was given) and a pyramid cut short by `buildPyramid({ levels })`.
 */
export function sameGroupDocument(existing: Record<string, unknown>, planned: Record<string, unknown>, windowPlanned: boolean): boolean {
  if (isDeepStrictEqual(existing, planned)) return true;
  const multiscaleOf = (doc: Record<string, unknown>): NgffMultiscale | undefined =>
    ((doc.attributes as { ome?: { multiscales?: NgffMultiscale[] } } | undefined)?.ome?.multiscales ?? (doc.multiscales as NgffMultiscale[] | undefined))?.[0];
  const existingLevels = multiscaleOf(existing)?.datasets?.length ?? 0;
  const normalise = (doc: Record<string, unknown>): Record<string, unknown> => {
    const copy = structuredClone(doc);
    for (const key of ['/zarr.json', '/.zattrs']) {
      const attributes = key === '/zarr.json' ? (copy.attributes as Record<string, unknown> | undefined) : copy;
      if (attributes) delete attributes[INCOMPLETE_ATTRIBUTE];
    }
    if (!windowPlanned) {
      delete copy.omero;
      const attributes = copy.attributes as { ome?: Record<string, unknown> } | undefined;
      if (attributes?.ome) delete attributes.ome.omero;
    }
    const multiscale = multiscaleOf(copy);
    if (multiscale && existingLevels >= 1) multiscale.datasets = multiscale.datasets.slice(0, existingLevels);
    return copy;
  };
  return isDeepStrictEqual(normalise(existing), normalise(planned));
}

/** 0.1 / 99.9 percentiles (of a subsample) and min/max of an array, read chunk by chunk. */
export async function robustWindow(reader: ChunkedArrayReader): Promise<OmeroWindow> {
  const { shape, chunks } = reader.info;
  const rank = shape.length;
  const grid = chunkGrid(reader.info);
  const values: number[] = [];
  let min = Infinity;
  let max = -Infinity;
  // The top level fits one chunk in y and x, but its z may not be downsampled: keep ~1M values.
  const step = Math.max(1, Math.ceil(voxelCount(shape) / 1_000_000));
  let seen = 0;
  for (let ordinal = 0; ordinal < voxelCount(grid); ordinal++) {
    const index = unravel(ordinal, grid);
    const chunk = await reader.readChunk(index);
    // Only the part of the chunk inside the array: rows of the last axis, counted with a carry.
    const extent = chunks.map((c, axis) => Math.min(c, shape[axis] - index[axis] * c));
    const outer = extent.slice(0, rank - 1);
    const counter = new Array<number>(rank - 1).fill(0);
    for (let row = 0; row < voxelCount(outer); row++) {
      let base = 0;
      for (let axis = 0; axis < rank - 1; axis++) base = (base + counter[axis]) * chunks[axis + 1];
      for (let x = 0; x < extent[rank - 1]; x++) {
        const v = chunk[base + x];
        if (!Number.isFinite(v)) continue;
        if (v < min) min = v;
        if (v > max) max = v;
        if (seen++ % step === 0) values.push(v);
      }
      for (let axis = rank - 2; axis >= 0; axis--) {
        if (++counter[axis] < outer[axis]) break;
        counter[axis] = 0;
      }
    }
  }
  if (!values.length) return { start: 0, end: 1, min: 0, max: 1 };
  values.sort((p, q) => p - q);
  const at = (q: number): number => values[Math.min(values.length - 1, Math.floor(q * (values.length - 1)))];
  return { start: at(0.001), end: at(0.999), min, max };
}
