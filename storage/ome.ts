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
 */
import { isDeepStrictEqual } from 'node:util';
import type { S3Settings } from './s3.js';
import type { ByteStore } from './byteStore.js';
import { chunkGrid, type ArrayInfo, type Axis, type ChunkedArrayReader, type ChunkedArrayWriter, type Placement } from './chunked.js';
import {
  createZarrArray,
  encodeJson,
  joinKey,
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
import { VERSION } from '../core/version.js';

// ---------------------------------------------------------------------------------------------
// Metadata types (the subset of NGFF we read and write)

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

function decodeJson(bytes: Uint8Array | undefined): Record<string, unknown> | undefined {
  if (!bytes) return undefined;
  return JSON.parse(new TextDecoder().decode(bytes)) as Record<string, unknown>;
}

/** The OME metadata of the group at the store root, or null when it has none. */
export async function readOmeMetadata(store: ByteStore): Promise<OmeMetadata | null> {
  const v3 = decodeJson(await store.get('/zarr.json'));
  if (v3) {
    const attributes = (v3.attributes ?? {}) as Record<string, unknown>;
    const ome = attributes.ome as { version?: string; multiscales?: NgffMultiscale[]; omero?: OmeMetadata['omero'] } | undefined;
    const multiscales = ome?.multiscales ?? (attributes.multiscales as NgffMultiscale[] | undefined);
    if (!multiscales?.length) return null;
    return { ngffVersion: '0.5', multiscale: multiscales[0], attributes, omero: ome?.omero ?? (attributes.omero as OmeMetadata['omero']) };
  }
  const v2 = decodeJson(await store.get('/.zattrs'));
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
}

export interface OmeZarrWriter extends ChunkedArrayWriter {
  readonly ngffVersion: '0.5' | '0.4';
  /** Shapes of the planned pyramid levels (level 0 first). */
  readonly levelShapes: readonly number[][];
  /** Chunk-wise, from level 0 up; `levels` counts level 0 (default: all planned). */
  buildPyramid(opts?: { levels?: number; concurrency?: number }): Promise<void>;
}

export interface PyramidLevel {
  shape: number[];
  placement: Placement;
  /** Downsampling factor per axis from the level below (1 or 2); level 0: all 1. */
  factors: number[];
}

const MAX_LEVELS_DEFAULT = 12;

/**
 * Plans the pyramid: 2x in y and x until a level fits one chunk in y and x.
 * z is never downsampled: viv's MultiscaleImageLayer (and so vizarr) hands the same z index to
 * every level (viv issue #901, "Support downsampled Z", open), so a halved z would show another
 * plane, or fail, once zoomed out. A level whose x extent would be 4 or less is not made: viv's
 * loaders read an array whose last axis has 3 or 4 entries as interleaved RGB(A) (isInterleaved).
 */
export function planPyramid(shape: readonly number[], chunks: readonly number[], placement: Placement, maxLevels = MAX_LEVELS_DEFAULT): PyramidLevel[] {
  const rank = shape.length;
  const factors = shape.map((_, axis) => (axis >= rank - 2 ? 2 : 1));
  const levels: PyramidLevel[] = [{ shape: [...shape], placement: { scale: [...placement.scale], translation: [...placement.translation] }, factors: new Array(rank).fill(1) }];
  while (levels.length < maxLevels) {
    const last = levels[levels.length - 1];
    if (last.shape[rank - 2] <= chunks[rank - 2] && last.shape[rank - 1] <= chunks[rank - 1]) break;
    const next = last.shape.map((n, axis) => Math.ceil(n / factors[axis]));
    if (next[rank - 1] <= 4) break;
    levels.push({
      shape: next,
      placement: {
        scale: last.placement.scale.map((s, axis) => s * factors[axis]),
        // The new pixel's centre is the mean of the centres it averages.
        translation: last.placement.translation.map((t, axis) => t + ((factors[axis] - 1) / 2) * last.placement.scale[axis]),
      },
      factors: [...factors],
    });
  }
  return levels;
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

function omeroOf(window: OmeroWindow, shape: readonly number[], version: '0.4' | '0.5'): Record<string, unknown> {
  return {
    ...(version === '0.4' ? { version: '0.4' } : {}),
    channels: [
      { active: true, coefficient: 1, color: 'FFFFFF', family: 'linear', inverted: false, label: 'denoised', window: displayableWindow(window) },
    ],
    rdefs: { defaultT: 0, defaultZ: shape.length === 3 ? Math.floor(shape[0] / 2) : 0, model: 'greyscale' },
  };
}

function groupDocuments(
  opts: CreateOmeZarrOptions,
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
function sameGroupDocument(existing: Record<string, unknown>, planned: Record<string, unknown>, windowPlanned: boolean): boolean {
  if (isDeepStrictEqual(existing, planned)) return true;
  const multiscaleOf = (doc: Record<string, unknown>): NgffMultiscale | undefined =>
    ((doc.attributes as { ome?: { multiscales?: NgffMultiscale[] } } | undefined)?.ome?.multiscales ?? (doc.multiscales as NgffMultiscale[] | undefined))?.[0];
  const existingLevels = multiscaleOf(existing)?.datasets?.length ?? 0;
  const normalise = (doc: Record<string, unknown>): Record<string, unknown> => {
    const copy = structuredClone(doc);
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

  async close(): Promise<void> {
    await this.store.close?.();
  }
}

/** Level k chunk by chunk: each output chunk reads the 2^d chunks (or fewer) below it, nothing more. */
async function downsampleLevel(below: ChunkedArrayReader, target: ZarrArrayWriter, concurrency: number): Promise<void> {
  const chunks = target.info.chunks;
  const factors = target.info.shape.map((n, axis) => (below.info.shape[axis] === n ? 1 : 2));
  const grid = chunkGrid(target.info);
  const belowGrid = chunkGrid(below.info);
  const total = voxelCount(grid);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < total) {
      const ordinal = next++;
      const index = unravel(ordinal, grid);
      // Region of the level below covered by this output chunk.
      const origin = index.map((i, axis) => i * chunks[axis] * factors[axis]);
      const extent = chunks.map((c, axis) => Math.min(c * factors[axis], Math.max(0, below.info.shape[axis] - origin[axis])));
      const sums = new Float64Array(voxelCount(chunks));
      const counts = new Uint32Array(sums.length);
      const firstChunk = origin.map((o, axis) => Math.floor(o / below.info.chunks[axis]));
      const lastChunk = origin.map((o, axis) => Math.min(belowGrid[axis] - 1, Math.floor((o + Math.max(extent[axis], 1) - 1) / below.info.chunks[axis])));
      const span = lastChunk.map((l, axis) => l - firstChunk[axis] + 1);
      for (let s = 0; s < voxelCount(span); s++) {
        const sourceIndex = unravel(s, span).map((v, axis) => v + firstChunk[axis]);
        const values = await below.readChunk(sourceIndex);
        accumulate(values, sourceIndex, below.info, origin, extent, factors, chunks, sums, counts);
      }
      const out = new Float32Array(sums.length);
      for (let i = 0; i < out.length; i++) out[i] = counts[i] ? sums[i] / counts[i] : 0;
      await target.writeChunk(index, out);
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, total) }, worker));
}

function unravel(ordinal: number, grid: readonly number[]): number[] {
  const index = new Array<number>(grid.length);
  let rest = ordinal;
  for (let axis = grid.length - 1; axis >= 0; axis--) {
    index[axis] = rest % grid[axis];
    rest = Math.floor(rest / grid[axis]);
  }
  return index;
}

/** Adds the voxels of one source chunk that lie inside the array and the region to their output cells. */
function accumulate(
  values: Float32Array,
  sourceIndex: number[],
  source: ArrayInfo,
  origin: number[],
  extent: number[],
  factors: number[],
  outChunks: readonly number[],
  sums: Float64Array,
  counts: Uint32Array,
): void {
  const rank = sourceIndex.length;
  const chunkStart = sourceIndex.map((i, axis) => i * source.chunks[axis]);
  // Per axis, the source-local range inside the array and the region.
  const lo = chunkStart.map((s, axis) => Math.max(s, origin[axis]) - s);
  const hi = chunkStart.map((s, axis) => Math.min(s + source.chunks[axis], origin[axis] + extent[axis], source.shape[axis]) - s);
  if (lo.some((l, axis) => l >= hi[axis])) return;
  const srcStride = new Array<number>(rank);
  const outStride = new Array<number>(rank);
  let a = 1;
  let b = 1;
  for (let axis = rank - 1; axis >= 0; axis--) {
    srcStride[axis] = a;
    outStride[axis] = b;
    a *= source.chunks[axis];
    b *= outChunks[axis];
  }
  const counter = lo.slice();
  const last = rank - 1;
  for (;;) {
    let srcBase = 0;
    let outBase = 0;
    for (let axis = 0; axis < last; axis++) {
      srcBase += counter[axis] * srcStride[axis];
      outBase += Math.floor((chunkStart[axis] + counter[axis] - origin[axis]) / factors[axis]) * outStride[axis];
    }
    const fx = factors[last];
    for (let x = lo[last]; x < hi[last]; x++) {
      const o = outBase + Math.floor((chunkStart[last] + x - origin[last]) / fx);
      sums[o] += values[srcBase + x];
      counts[o]++;
    }
    let axis = last - 1;
    while (axis >= 0) {
      counter[axis]++;
      if (counter[axis] < hi[axis]) break;
      counter[axis] = lo[axis];
      axis--;
    }
    if (axis < 0) break;
  }
}

/** 0.1 / 99.9 percentiles (of a subsample) and min/max of an array, read chunk by chunk. */
async function robustWindow(reader: ChunkedArrayReader): Promise<OmeroWindow> {
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
