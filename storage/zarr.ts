/**
 * Zarr v2 and v3 arrays on any ByteStore. Reading goes through zarrita (its codec registry covers
 * bytes, zstd, gzip, zlib, blosc and lz4 in Node: zstd/blosc/lz4 load numcodecs' wasm builds).
 * Writing does NOT go through zarrita: zarrita writes only v3, and writes partial chunks by
 * read-modify-write without locking. We encode whole chunks ourselves (typed array ->
 * little-endian bytes -> numcodecs codec) and store them with one atomic `set`, for v3 (zarr.json,
 * codecs [bytes little, zstd|gzip]) and v2 (.zarray, compressor zstd|gzip|null, '/' separator, as
 * OME-Zarr v0.4 wants).
 *
 * zstd, ours and zarrita's, runs in the codec worker pool (workers/codecPool.ts): large chunks are
 * (de)compressed off the calling thread, so a streaming run's main thread keeps reading, stitching
 * and writing meanwhile. Same numcodecs code and level, so the same bytes.
 */
import * as zarr from 'zarrita';
import GZip from 'numcodecs/gzip';
import { zstdDecode, zstdEncode } from '../workers/codecPool.js';
import { isDeepStrictEqual } from 'node:util';
import type { ByteStore } from './byteStore.js';
import type { ArrayInfo, Axis, ChunkedArrayReader, ChunkedArrayWriter } from './chunked.js';
import { BlindspotError, InputError, OutputError } from '../core/errors.js';
import { checkDecodedChunk, checkZarrArrayMetadata } from './zarrCheck.js';
import { sampleTypeRange, voxelCount, type SampleType } from '../core/volume.js';

export type ZarrVersion = 2 | 3;
export type ZarrCodec = 'zstd' | 'gzip' | 'none';

const ZSTD_LEVEL = 3;
const GZIP_LEVEL = 5;

/** zarrita's zstd codec (v3 'zstd', v2 compressor 'zstd') with its work in the codec pool. */
class PooledZstd {
  readonly kind = 'bytes_to_bytes' as const;
  private constructor(private readonly level: number) {}
  static fromConfig(config: unknown): PooledZstd {
    const level = (config as { level?: unknown } | null)?.level;
    // numcodecs' own rule: a level <= 0 means its default (3).
    return new PooledZstd(typeof level === 'number' && Number.isInteger(level) && level > 0 ? level : ZSTD_LEVEL);
  }
  encode(bytes: Uint8Array): Promise<Uint8Array> {
    return zstdEncode(bytes, this.level);
  }
  decode(bytes: Uint8Array): Promise<Uint8Array> {
    return zstdDecode(bytes);
  }
}
for (const name of ['zstd', 'numcodecs.zstd']) zarr.registry.set(name, async () => PooledZstd as never);

// ---------------------------------------------------------------------------------------------
// Reading

/** Default axes when the metadata names none: trailing z,y,x as space, leading ones 'other'. */
export function defaultAxes(rank: number, names?: readonly (string | null)[]): Axis[] {
  const spatial = ['z', 'y', 'x'].slice(3 - Math.min(rank, 3));
  return Array.from({ length: rank }, (_, i) => {
    const given = names?.[i] ?? undefined;
    const fallback = i >= rank - spatial.length ? spatial[i - (rank - spatial.length)] : `dim_${i}`;
    const name = given ?? fallback;
    const type = name === 't' ? 'time' : name === 'c' ? 'channel' : ['z', 'y', 'x'].includes(name) ? 'space' : 'other';
    return { name, type } as Axis;
  });
}

/** The SampleType a zarr data type is reported as (values are read as float32 anyway). */
function sampleTypeOf(dtype: string, url: string): SampleType {
  switch (dtype) {
    case 'uint8':
    case 'bool':
      return 'uint8';
    case 'int8':
    case 'int16':
      return 'int16';
    case 'uint16':
      return 'uint16';
    case 'int32':
      return 'int32';
    case 'float16':
    case 'float32':
      return 'float32';
    case 'uint32':
    case 'int64':
    case 'uint64':
    case 'float64':
      return 'float64';
    default:
      throw new InputError(url, `has data type ${dtype}, which is not a numeric image type`);
  }
}

export interface ZarrArrayReader extends ChunkedArrayReader {
  readonly zarrVersion: ZarrVersion;
  /** The zarrita array, for callers that want plain zarrita access. */
  readonly array: zarr.Array<zarr.DataType, ByteStore>;
}

/** Copies a zarrita chunk (any strides, any numeric type) into a C-order float32 array. */
function chunkToFloat32(chunk: { data: ArrayLike<unknown>; shape: number[]; stride: number[] }): Float32Array {
  const { data, shape, stride } = chunk;
  const total = voxelCount(shape);
  const out = new Float32Array(total);
  const cStride = new Array<number>(shape.length);
  let s = 1;
  for (let axis = shape.length - 1; axis >= 0; axis--) {
    cStride[axis] = s;
    s *= shape[axis];
  }
  const contiguous = stride.every((v, axis) => v === cStride[axis] || shape[axis] === 1);
  const value = (i: number): number => {
    const v = data[i];
    return typeof v === 'number' ? v : typeof v === 'bigint' ? Number(v) : v ? 1 : 0;
  };
  if (contiguous) {
    if (data instanceof Float32Array) out.set(data.subarray(0, total));
    else for (let i = 0; i < total; i++) out[i] = value(i);
    return out;
  }
  for (let i = 0; i < total; i++) {
    let rest = i;
    let source = 0;
    for (let axis = 0; axis < shape.length; axis++) {
      const coordinate = Math.floor(rest / cStride[axis]);
      rest -= coordinate * cStride[axis];
      source += coordinate * stride[axis];
    }
    out[i] = value(source);
  }
  return out;
}

/**
 * Opens the Zarr array at `arrayPath` ('/' = the store root) of `store`.
 * `axes` overrides the axes from the metadata (OME-Zarr passes the NGFF axes).
 */
export async function openZarrArray(
  store: ByteStore,
  opts: { arrayPath?: string; axes?: readonly Axis[]; placement?: ArrayInfo['placement']; attributes?: Record<string, unknown> } = {},
): Promise<ZarrArrayReader> {
  const arrayPath = normalisePath(opts.arrayPath ?? '/');
  const url = arrayPath === '/' ? store.url : `${store.url}${arrayPath}`;
  // Everything the metadata says is checked before zarrita sees it (storage/zarrCheck.ts).
  const checked = await checkZarrArrayMetadata(store, arrayPath);
  let array: zarr.Array<zarr.DataType, ByteStore>;
  try {
    array = await zarr.open(zarr.root(store).resolve(arrayPath), { kind: 'array' });
  } catch (cause) {
    throw new InputError(url, `is not a readable Zarr array (${(cause as Error).message})`, { cause });
  }
  const version: ZarrVersion = (await store.get(joinKey(arrayPath, 'zarr.json'))) ? 3 : 2;
  const rank = array.shape.length;
  const axes = opts.axes ? [...opts.axes] : defaultAxes(rank, array.dimensionNames);
  if (axes.length !== rank) throw new InputError(url, `has ${rank} dimensions but ${axes.length} axes`);
  const chunkVoxels = voxelCount(array.chunks);
  const info: ArrayInfo = {
    url,
    shape: [...array.shape],
    chunks: [...array.chunks],
    dtype: sampleTypeOf(array.dtype, url),
    axes,
    placement: opts.placement ?? { scale: axes.map(() => 1), translation: axes.map(() => 0) },
    attributes: opts.attributes ?? (array.attrs as Record<string, unknown>),
  };
  return {
    info,
    zarrVersion: version,
    array,
    async readChunk(index) {
      const key = chunkKey(arrayPath, index, version);
      let chunk: { data: ArrayLike<unknown>; shape: number[]; stride: number[] };
      try {
        chunk = (await array.getChunk([...index])) as unknown as typeof chunk;
      } catch (cause) {
        if (cause instanceof BlindspotError) throw cause;
        throw new InputError(url, `chunk ${key} cannot be decoded (${(cause as Error).message}): the chunk is truncated or corrupt`, { cause });
      }
      checkDecodedChunk(url, key, chunk.data.length, chunkVoxels, checked?.dtype ?? String(array.dtype));
      return chunkToFloat32(chunk);
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Writing

export interface ZarrArraySpec {
  shape: readonly number[];
  chunks: readonly number[];
  dtype: SampleType;
  zarrVersion: ZarrVersion;
  codec?: ZarrCodec;
  /** v3 dimension_names. */
  dimensionNames?: readonly string[];
}

const V2_DTYPE: Record<SampleType, string> = {
  uint8: '|u1',
  uint16: '<u2',
  int16: '<i2',
  int32: '<i4',
  float32: '<f4',
  float64: '<f8',
};

/** The array metadata document (zarr.json or .zarray) for `spec`, as JSON-ready object. */
export function arrayMetadata(spec: ZarrArraySpec): Record<string, unknown> {
  const codec = spec.codec ?? 'zstd';
  if (spec.zarrVersion === 3) {
    const codecs: unknown[] = [{ name: 'bytes', configuration: { endian: 'little' } }];
    if (codec === 'zstd') codecs.push({ name: 'zstd', configuration: { level: ZSTD_LEVEL, checksum: false } });
    if (codec === 'gzip') codecs.push({ name: 'gzip', configuration: { level: GZIP_LEVEL } });
    const meta: Record<string, unknown> = {
      zarr_format: 3,
      node_type: 'array',
      shape: [...spec.shape],
      data_type: spec.dtype,
      chunk_grid: { name: 'regular', configuration: { chunk_shape: [...spec.chunks] } },
      chunk_key_encoding: { name: 'default', configuration: { separator: '/' } },
      fill_value: 0,
      codecs,
      attributes: {},
    };
    if (spec.dimensionNames) meta.dimension_names = [...spec.dimensionNames];
    return meta;
  }
  return {
    chunks: [...spec.chunks],
    compressor: codec === 'zstd' ? { id: 'zstd', level: ZSTD_LEVEL } : codec === 'gzip' ? { id: 'gzip', level: GZIP_LEVEL } : null,
    dimension_separator: '/',
    dtype: V2_DTYPE[spec.dtype],
    fill_value: 0,
    filters: null,
    order: 'C',
    shape: [...spec.shape],
    zarr_format: 2,
  };
}

export function encodeJson(value: unknown): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(value, null, 2) + '\n');
}

export function normalisePath(p: string): string {
  const trimmed = p.replace(/^\/+|\/+$/g, '');
  return trimmed === '' ? '/' : `/${trimmed}`;
}

export function joinKey(dir: string, name: string): string {
  const base = normalisePath(dir);
  return base === '/' ? `/${name}` : `${base}/${name}`;
}

/**
 * Writes a metadata document idempotently: absent -> written; present and equal (as JSON) -> left
 * alone; present and different -> OutputError naming the URL.
 */
export async function writeMetadataOnce(store: ByteStore, key: string, doc: unknown): Promise<void> {
  const existing = await store.get(key);
  if (existing) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(new TextDecoder().decode(existing));
    } catch {
      parsed = undefined;
    }
    if (isDeepStrictEqual(parsed, JSON.parse(JSON.stringify(doc)))) return;
    throw new OutputError(`${store.url}${key}`, 'already holds different Zarr metadata; choose another output or remove it');
  }
  await store.set(key, encodeJson(doc));
}

/** Rounds and clips float32 values into the typed array of `dtype` (little-endian bytes out). */
export function toStoredBytes(values: Float32Array, dtype: SampleType): Uint8Array {
  let typed: Uint8Array | Uint16Array | Int16Array | Int32Array | Float32Array | Float64Array;
  if (dtype === 'float32') typed = values;
  else if (dtype === 'float64') typed = Float64Array.from(values);
  else {
    const [low, high] = sampleTypeRange(dtype);
    const Ctor = { uint8: Uint8Array, uint16: Uint16Array, int16: Int16Array, int32: Int32Array }[dtype];
    typed = new Ctor(values.length);
    for (let i = 0; i < values.length; i++) {
      const v = values[i];
      // NaN has no integer value; it is stored as the fill value 0.
      typed[i] = Number.isNaN(v) ? 0 : Math.min(high, Math.max(low, Math.round(v)));
    }
  }
  // Node on every supported platform is little-endian, which both formats' metadata declare.
  return new Uint8Array(typed.buffer, typed.byteOffset, typed.byteLength).slice();
}

/** `raw` encoded with `codec`; with `owned` the caller hands `raw` over (it may be moved to a codec worker, not copied). */
export async function encodeChunkBytes(raw: Uint8Array, codec: ZarrCodec, opts: { owned?: boolean } = {}): Promise<Uint8Array> {
  if (codec === 'none') return raw;
  if (codec === 'gzip') return await GZip.fromConfig({ id: 'gzip', level: GZIP_LEVEL }).encode(raw);
  return await zstdEncode(raw, ZSTD_LEVEL, opts);
}

/** Store key of chunk `index`: v3 '<path>/c/i/j/k', v2 '<path>/i/j/k' ('/' separator). */
export function chunkKey(arrayPath: string, index: readonly number[], version: ZarrVersion): string {
  const tail = version === 3 ? ['c', ...index].join('/') : index.length === 0 ? '0' : index.join('/');
  return joinKey(arrayPath, tail);
}

export interface ZarrArrayWriter extends ChunkedArrayWriter {
  readonly store: ByteStore;
  readonly arrayPath: string;
  readonly spec: ZarrArraySpec;
}

/** A writer for an array whose metadata already exists (or is written by `createZarrArray`). */
export function zarrArrayWriter(store: ByteStore, arrayPath: string, spec: ZarrArraySpec, info?: Partial<ArrayInfo>): ZarrArrayWriter {
  const path = normalisePath(arrayPath);
  const codec = spec.codec ?? 'zstd';
  const expected = voxelCount(spec.chunks);
  const axes = info?.axes ?? defaultAxes(spec.shape.length, spec.dimensionNames);
  const fullInfo: ArrayInfo = {
    url: info?.url ?? (path === '/' ? store.url : `${store.url}${path}`),
    shape: [...spec.shape],
    chunks: [...spec.chunks],
    dtype: spec.dtype,
    axes,
    placement: info?.placement ?? { scale: axes.map(() => 1), translation: axes.map(() => 0) },
    attributes: info?.attributes,
  };
  return {
    info: fullInfo,
    store,
    arrayPath: path,
    spec,
    async writeChunk(index, values) {
      if (values.length !== expected) {
        throw new Error(`${fullInfo.url}: chunk [${index.join(', ')}] has ${values.length} values, a whole chunk has ${expected}`);
      }
      // toStoredBytes returns a fresh copy: ours to hand over.
      const encoded = await encodeChunkBytes(toStoredBytes(values, spec.dtype), codec, { owned: true });
      await store.set(chunkKey(path, index, spec.zarrVersion), encoded);
      return encoded;
    },
    async readStoredChunk(index) {
      return (await store.get(chunkKey(path, index, spec.zarrVersion))) ?? null;
    },
  };
}

/** Creates (idempotently) the array's metadata and returns a whole-chunk writer for it. */
export async function createZarrArray(store: ByteStore, arrayPath: string, spec: ZarrArraySpec, info?: Partial<ArrayInfo>): Promise<ZarrArrayWriter> {
  if (spec.shape.length !== spec.chunks.length || spec.chunks.some((c) => !Number.isInteger(c) || c < 1)) {
    throw new Error(`chunks [${spec.chunks.join(', ')}] do not fit shape [${spec.shape.join(', ')}]`);
  }
  const name = spec.zarrVersion === 3 ? 'zarr.json' : '.zarray';
  await writeMetadataOnce(store, joinKey(arrayPath, name), arrayMetadata(spec));
  return zarrArrayWriter(store, arrayPath, spec, info);
}

/** Reads the spec back from an array's metadata written by `createZarrArray` (for resuming). */
export async function readZarrArraySpec(store: ByteStore, arrayPath: string): Promise<ZarrArraySpec | null> {
  const v3 = await store.get(joinKey(arrayPath, 'zarr.json'));
  if (v3) {
    const meta = JSON.parse(new TextDecoder().decode(v3)) as {
      shape: number[]; data_type: SampleType; chunk_grid: { configuration: { chunk_shape: number[] } };
      codecs: { name: string }[]; dimension_names?: string[];
    };
    const names = meta.codecs.map((c) => c.name);
    return {
      shape: meta.shape,
      chunks: meta.chunk_grid.configuration.chunk_shape,
      dtype: meta.data_type,
      zarrVersion: 3,
      codec: names.includes('zstd') ? 'zstd' : names.includes('gzip') ? 'gzip' : 'none',
      ...(meta.dimension_names ? { dimensionNames: meta.dimension_names } : {}),
    };
  }
  const v2 = await store.get(joinKey(arrayPath, '.zarray'));
  if (!v2) return null;
  const meta = JSON.parse(new TextDecoder().decode(v2)) as { shape: number[]; chunks: number[]; dtype: string; compressor: { id: string } | null };
  const dtype = (Object.keys(V2_DTYPE) as SampleType[]).find((t) => V2_DTYPE[t] === meta.dtype);
  if (!dtype) throw new InputError(store.url, `array ${arrayPath} has data type ${meta.dtype}, not one blindspot writes`);
  return {
    shape: meta.shape,
    chunks: meta.chunks,
    dtype,
    zarrVersion: 2,
    codec: meta.compressor?.id === 'zstd' ? 'zstd' : meta.compressor?.id === 'gzip' ? 'gzip' : 'none',
  };
}
