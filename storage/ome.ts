/**
 * OME-Zarr (NGFF) on top of storage/zarr.ts.
 *
 * Reading: NGFF v0.4 (Zarr v2, `.zattrs` multiscales) and v0.5 (Zarr v3, `zarr.json`
 * attributes.ome.multiscales). Level 0 is opened; axes, units and the level-0 placement (dataset
 * transforms followed by the multiscale-level ones) are reported; non-spatial axes (t, c, others)
 * are fixed at the chosen index, giving a YX or ZYX view. A view chunk is the underlying chunk at
 * the fixed indices; when the c or t chunk size is > 1 the underlying chunk holds several
 * channels/time points and the view slices out the chosen one.
 *
 * Writing: `createOmeZarr` writes v0.5 by default, v0.4 on request, with a pyramid planned at
 * creation (level k: 2x in y and x only, mean of the 2x2 blocks, translation shifted by half a
 * pixel of the new grid; z keeps its size at every level because viv and vizarr pass one z index
 * to every level, see planPyramid). Array metadata is written before the group metadata, so a group
 * document means the whole layout exists (what `openOmeZarrWriter` looks for to resume).
 * test/viewers.test.ts opens these outputs as viv/vizarr and napari's readers do.
 * The NGFF metadata (reading it, the group documents written, the incomplete marker) is
 * omeMetadata.ts; the pyramid's levels and their downsampling are omePyramid.ts.
 */
import { isDeepStrictEqual } from 'node:util';
import type { S3Settings } from './s3.js';
import type { ByteStore } from './byteStore.js';
import type { ArrayInfo, Axis, ChunkedArrayReader, ChunkedArrayWriter, Placement } from './chunked.js';
import {
  createZarrArray,
  encodeJson,
  openZarrArray,
  readZarrArraySpec,
  zarrArrayWriter,
  type ZarrArrayWriter,
  type ZarrCodec,
  type ZarrVersion,
} from './zarr.js';
import { openByteStore } from './openStore.js';
import { InputError, OutputError } from '../core/errors.js';
import { voxelCount, type SampleType } from '../core/volume.js';
import {
  clearIncomplete,
  decodeJson,
  groupAttributes,
  groupDocuments,
  incompleteMarker,
  levelPlacement,
  ngffAxes,
  omeroOf,
  readOmeMetadata,
  robustWindow,
  sameGroupDocument,
  setIncomplete,
  type NgffMultiscale,
  type OmeroWindow,
} from './omeMetadata.js';
import { downsampleLevel, planPyramid } from './omePyramid.js';

// ---------------------------------------------------------------------------------------------
// Reading views

export interface SliceChoice {
  channel?: number;
  time?: number;
}

/**
 * A view of `reader` with every non-spatial axis fixed: t at `time`, c at `channel`, other axes
 * at 0 (they must have size 1, or be chosen as channel when there is no c axis). Spatial axes
 * must be the trailing 2 or 3, as NGFF orders them.
 */
export function spatialView(reader: ChunkedArrayReader, choice: SliceChoice = {}): ChunkedArrayReader {
  const { info } = reader;
  const rank = info.shape.length;
  const spatialAxes = info.axes.map((a, i) => (a.type === 'space' ? i : -1)).filter((i) => i >= 0);
  if (spatialAxes.length < 2 || spatialAxes.length > 3) {
    throw new InputError(info.url, `has ${spatialAxes.length} spatial axes (${info.axes.map((a) => a.name).join(',')}); blindspot needs 2 (YX) or 3 (ZYX)`);
  }
  if (spatialAxes.some((axis, k) => axis !== rank - spatialAxes.length + k)) {
    throw new InputError(info.url, `has spatial axes before non-spatial ones (${info.axes.map((a) => a.name).join(',')}); NGFF puts them last`);
  }
  const fixedCount = rank - spatialAxes.length;
  if (fixedCount === 0 && choice.channel === undefined && choice.time === undefined) return reader;
  const fixedIndex: number[] = [];
  for (let axis = 0; axis < fixedCount; axis++) {
    const a = info.axes[axis];
    const size = info.shape[axis];
    const chosen = a.type === 'time' ? choice.time : a.type === 'channel' ? choice.channel : undefined;
    const what = a.type === 'time' ? 'time point' : a.type === 'channel' ? 'channel' : `index on axis ${a.name}`;
    if (chosen === undefined && size > 1) {
      const option = a.type === 'time' ? '--time' : a.type === 'channel' ? '--channel' : null;
      throw new InputError(info.url, `has ${size} entries on axis ${a.name}; ${option ? `choose one with ${option}` : 'blindspot reads only size-1 non-spatial axes besides t and c'}`);
    }
    const value = chosen ?? 0;
    if (!Number.isInteger(value) || value < 0 || value >= size) {
      throw new InputError(info.url, `has no ${what} ${value} (axis ${a.name} has ${size})`);
    }
    fixedIndex.push(value);
  }
  for (const [name, value] of [['channel', choice.channel], ['time', choice.time]] as const) {
    const type = name === 'channel' ? 'channel' : 'time';
    if (value !== undefined && value !== 0 && !info.axes.some((a) => a.type === type)) {
      throw new InputError(info.url, `has no ${type} axis, so ${name} ${value} does not exist`);
    }
  }
  const spatialChunks = info.chunks.slice(fixedCount);
  const planeSize = voxelCount(spatialChunks);
  // Offset of the chosen plane inside the underlying chunk (C order, spatial axes trailing).
  let stride = planeSize;
  let offset = 0;
  for (let axis = fixedCount - 1; axis >= 0; axis--) {
    offset += (fixedIndex[axis] % info.chunks[axis]) * stride;
    stride *= info.chunks[axis];
  }
  const fixedChunk = fixedIndex.map((v, axis) => Math.floor(v / info.chunks[axis]));
  return {
    info: {
      url: info.url,
      shape: info.shape.slice(fixedCount),
      chunks: spatialChunks,
      dtype: info.dtype,
      axes: info.axes.slice(fixedCount),
      placement: { scale: info.placement.scale.slice(fixedCount), translation: info.placement.translation.slice(fixedCount) },
      attributes: { ...(info.attributes ?? {}), selection: { channel: choice.channel ?? null, time: choice.time ?? null } },
    },
    async readChunk(index) {
      const whole = await reader.readChunk([...fixedChunk, ...index]);
      return fixedCount === 0 || whole.length === planeSize ? whole : whole.slice(offset, offset + planeSize);
    },
    close: reader.close?.bind(reader),
  };
}

/** Opens level 0 of the OME-Zarr at the store root as a ZYX/YX view (null: not OME-Zarr). */
export async function openOmeZarr(store: ByteStore, choice: SliceChoice = {}): Promise<ChunkedArrayReader | null> {
  const meta = await readOmeMetadata(store);
  if (!meta) return null;
  const { multiscale } = meta;
  const marker = incompleteMarker(meta.attributes);
  if (marker) throw new InputError(store.url, `${marker.note}${marker.failure ? ` (the run failed: ${marker.failure})` : ''}`);
  const dataset = multiscale.datasets?.[0];
  if (!dataset?.path) throw new InputError(store.url, 'has OME multiscales metadata without datasets');
  const probe = await openZarrArray(store, { arrayPath: dataset.path });
  const rank = probe.info.shape.length;
  const axes = ngffAxes(multiscale, rank);
  if (axes.length !== rank) throw new InputError(store.url, `multiscales axes do not match the ${rank} dimensions of ${dataset.path}`);
  const window = meta.omero?.channels?.[choice.channel ?? 0]?.window;
  const level0 = await openZarrArray(store, {
    arrayPath: dataset.path,
    axes,
    placement: levelPlacement(multiscale, 0, rank),
    attributes: { ngffVersion: meta.ngffVersion, ...(window ? { window } : {}) },
  });
  return spatialView(level0, choice);
}

// ---------------------------------------------------------------------------------------------
// Writing

export interface CreateOmeZarrOptions {
  /** YX or ZYX. */
  shape: number[];
  chunks: number[];
  dtype: SampleType;
  axes: Axis[];
  placement: Placement;
  ngffVersion?: '0.5' | '0.4';
  codec?: ZarrCodec;
  provenance?: Record<string, unknown>;
  window?: OmeroWindow;
  /** Upper bound on pyramid levels, level 0 included (default: until a level fits one chunk, at most 12). */
  maxLevels?: number;
  name?: string;
  /**
   * Mark the group incomplete (omeMetadata.ts INCOMPLETE_ATTRIBUTE) from its creation until buildPyramid finishes, so
   * an output left by a failed or killed run never passes for a result.
   */
  markIncomplete?: boolean;
}

export interface OmeZarrWriter extends ChunkedArrayWriter {
  readonly ngffVersion: '0.5' | '0.4';
  /** Shapes of the planned pyramid levels (level 0 first). */
  readonly levelShapes: readonly number[][];
  /** Chunk-wise, from level 0 up; `levels` counts level 0 (default: all planned). Clears the incomplete marker. */
  buildPyramid(opts?: { levels?: number; concurrency?: number }): Promise<void>;
  /** Marks the group incomplete, recording why the run failed (best effort: a failed write is ignored). */
  markIncomplete(reason: string): Promise<void>;
}

class OmeZarrWriterImpl implements OmeZarrWriter {
  readonly info: ArrayInfo;
  readonly levelShapes: number[][];
  constructor(
    private readonly store: ByteStore,
    readonly ngffVersion: '0.5' | '0.4',
    private readonly levels: ZarrArrayWriter[],
    private readonly groupDocs: { key: string; doc: Record<string, unknown> }[],
    private readonly windowKnown: boolean,
  ) {
    this.info = levels[0].info;
    this.levelShapes = levels.map((l) => [...l.info.shape]);
  }

  writeChunk(index: readonly number[], values: Float32Array): Promise<Uint8Array> {
    return this.levels[0].writeChunk(index, values);
  }

  readStoredChunk(index: readonly number[]): Promise<Uint8Array | null> {
    return this.levels[0].readStoredChunk(index);
  }

  async buildPyramid(opts: { levels?: number; concurrency?: number } = {}): Promise<void> {
    const count = Math.max(1, Math.min(opts.levels ?? this.levels.length, this.levels.length));
    const concurrency = Math.max(1, opts.concurrency ?? 4);
    for (let k = 1; k < count; k++) {
      const below = await openZarrArray(this.store, { arrayPath: String(k - 1) });
      await downsampleLevel(below, this.levels[k], concurrency);
    }
    const docs = this.groupDocs.map(({ key, doc }) => ({ key, doc: structuredClone(doc) }));
    // The run is complete once the pyramid is: the marker goes in the same write as the final metadata.
    for (const { key, doc } of docs) clearIncomplete(key, doc);
    if (count < this.levels.length) {
      for (const { doc } of docs) {
        const multiscales = ((doc.attributes as { ome?: { multiscales?: NgffMultiscale[] } } | undefined)?.ome?.multiscales ??
          (doc.multiscales as NgffMultiscale[] | undefined));
        if (multiscales) multiscales[0].datasets = multiscales[0].datasets.slice(0, count);
      }
    }
    if (!this.windowKnown) {
      const window = await robustWindow(await openZarrArray(this.store, { arrayPath: String(count - 1) }));
      for (const { doc } of docs) {
        const omero = omeroOf(window, this.info.shape, this.ngffVersion);
        const ome = (doc.attributes as { ome?: Record<string, unknown> } | undefined)?.ome;
        if (ome) ome.omero = omero;
        else if (doc.multiscales) doc.omero = omero;
      }
    }
    for (const { key, doc } of docs) {
      const existing = decodeJson(await this.store.get(key));
      if (!isDeepStrictEqual(existing, doc)) await this.store.set(key, encodeJson(doc));
    }
  }

  async markIncomplete(reason: string): Promise<void> {
    for (const { key, doc } of this.groupDocs) {
      if (!groupAttributes(key, structuredClone(doc))) continue;
      try {
        const stored = decodeJson(await this.store.get(key)) ?? structuredClone(doc);
        setIncomplete(key, stored, reason);
        await this.store.set(key, encodeJson(stored));
      } catch {
        // The output may be what failed; the marker set at creation stays in any case.
      }
    }
  }

  async close(): Promise<void> {
    await this.store.close?.();
  }
}

/** Creates (idempotently) an OME-Zarr at `url` and returns a writer for level 0. */
export async function createOmeZarr(url: string, opts: CreateOmeZarrOptions & { s3?: S3Settings }): Promise<OmeZarrWriter> {
  const rank = opts.shape.length;
  if (rank !== 2 && rank !== 3) throw new OutputError(url, `cannot hold a ${rank}D image as OME-Zarr here (YX or ZYX only)`);
  if (opts.chunks.length !== rank || opts.axes.length !== rank || opts.placement.scale.length !== rank || opts.placement.translation.length !== rank) {
    throw new OutputError(url, 'shape, chunks, axes and placement must all have one entry per axis');
  }
  const version = opts.ngffVersion ?? '0.5';
  const zarrVersion: ZarrVersion = version === '0.5' ? 3 : 2;
  const store = openByteStore(url, opts.s3);
  const levels = planPyramid(opts.shape, opts.chunks, opts.placement, opts.maxLevels);
  const names = opts.axes.map((a) => a.name);
  const writers: ZarrArrayWriter[] = [];
  for (let k = 0; k < levels.length; k++) {
    writers.push(
      await createZarrArray(
        store,
        String(k),
        { shape: levels[k].shape, chunks: opts.chunks, dtype: opts.dtype, zarrVersion, codec: opts.codec ?? 'zstd', ...(zarrVersion === 3 ? { dimensionNames: names } : {}) },
        { url: k === 0 ? url : `${url}/${k}`, axes: opts.axes, placement: levels[k].placement },
      ),
    );
  }
  // Through JSON and back, so comparisons see what a reader of the stored document sees (no undefined).
  const docs = groupDocuments(opts, levels, opts.window).map(({ key, doc }) => ({ key, doc: JSON.parse(JSON.stringify(doc)) as Record<string, unknown> }));
  if (opts.markIncomplete) for (const { key, doc } of docs) setIncomplete(key, doc);
  for (const { key, doc } of docs) {
    const existing = decodeJson(await store.get(key));
    if (existing === undefined) continue;
    if (!sameGroupDocument(existing, doc, opts.window !== undefined)) {
      throw new OutputError(url, 'already holds a different OME-Zarr (other shape, chunks, axes, placement or provenance); choose another output or remove it');
    }
  }
  // Group metadata last: its presence tells openOmeZarrWriter the layout is complete.
  for (const { key, doc } of docs) if (!(await store.get(key))) await store.set(key, encodeJson(doc));
  return new OmeZarrWriterImpl(store, version, writers, docs, opts.window !== undefined);
}

/** Reopens an OME-Zarr written by createOmeZarr, to resume writing it; null when there is none. */
export async function openOmeZarrWriter(url: string, s3?: S3Settings): Promise<OmeZarrWriter | null> {
  const store = openByteStore(url, s3);
  const meta = await readOmeMetadata(store);
  if (!meta) return null;
  const { multiscale } = meta;
  const writers: ZarrArrayWriter[] = [];
  for (let k = 0; k < multiscale.datasets.length; k++) {
    const path = multiscale.datasets[k].path;
    const spec = await readZarrArraySpec(store, path);
    if (!spec) throw new OutputError(url, `lists pyramid level ${path} but has no array there`);
    const axes = ngffAxes(multiscale, spec.shape.length);
    writers.push(zarrArrayWriter(store, path, spec, { url: k === 0 ? url : `${url}/${path}`, axes, placement: levelPlacement(multiscale, k, spec.shape.length) }));
  }
  if (!writers.length) throw new OutputError(url, 'has OME multiscales metadata without datasets');
  const docs: { key: string; doc: Record<string, unknown> }[] =
    meta.ngffVersion === '0.5'
      ? [{ key: '/zarr.json', doc: decodeJson(await store.get('/zarr.json'))! }]
      : [
          { key: '/.zgroup', doc: decodeJson(await store.get('/.zgroup')) ?? { zarr_format: 2 } },
          { key: '/.zattrs', doc: meta.attributes },
        ];
  const windowKnown = meta.omero?.channels?.[0]?.window !== undefined;
  return new OmeZarrWriterImpl(store, meta.ngffVersion, writers, docs, windowKnown);
}

export type { ZarrCodec };
