/**
 * Zarr metadata and chunks checked before use. A reader trusts nothing a file says: shapes and chunk
 * shapes must be positive integers, the chunk grid and one chunk of reasonable size, the data type one
 * blindspot reads, every codec known; and a decoded chunk must hold exactly the bytes its shape and
 * data type need (zarr-python refuses a short chunk too; zarrita would pad nothing and read past it).
 * A zero chunk size would otherwise send the tile loop round for ever, and a lying shape would ask
 * for a typed array larger than memory.
 */
import { registry } from 'zarrita';
import { InputError } from '../core/errors.js';
import type { ByteStore } from './byteStore.js';

/** Voxels in one chunk at most (2^30: 4 GiB as float32; chunks are decoded whole). */
export const MAX_CHUNK_VOXELS = 2 ** 30;
/** Chunks in one array at most (2^40: far beyond any real array; a guard against lying grids). */
export const MAX_CHUNK_COUNT = 2 ** 40;
/** Dimensions at most. */
const MAX_RANK = 8;

/** Data types blindspot reads (as float32), in v3 names. */
const SUPPORTED_DTYPES = new Set(['bool', 'uint8', 'int8', 'uint16', 'int16', 'uint32', 'int32', 'uint64', 'int64', 'float16', 'float32', 'float64']);

const V2_DTYPE_NAMES: Record<string, string> = {
  b1: 'bool', u1: 'uint8', i1: 'int8', u2: 'uint16', i2: 'int16', u4: 'uint32', i4: 'int32', u8: 'uint64', i8: 'int64',
  f2: 'float16', f4: 'float32', f8: 'float64', c8: 'complex64', c16: 'complex128',
};

/** Bytes per element of a supported data type. */
export function dtypeBytes(dtype: string): number {
  if (dtype === 'bool' || dtype.endsWith('int8')) return 1;
  const bits = /(\d+)$/.exec(dtype);
  return bits ? Number(bits[1]) / 8 : 1;
}

/** '<f4' -> 'float32'; '|O' -> 'object'; an unknown string as it is. */
function v2DtypeName(dtype: unknown): string {
  if (typeof dtype !== 'string') return JSON.stringify(dtype);
  const match = /^[<>|=]?([a-zA-Z])(\d+)$/.exec(dtype);
  if (match) return V2_DTYPE_NAMES[`${match[1]}${match[2]}`] ?? dtype;
  return dtype.replace(/^[<>|=]/, '') === 'O' ? 'object' : dtype;
}

export interface CheckedZarrMetadata {
  zarrVersion: 2 | 3;
  shape: number[];
  chunks: number[];
  /** v3 data type name. */
  dtype: string;
  /** The metadata document's location, for messages. */
  file: string;
}

/** Parses a JSON metadata document; corrupt JSON is an InputError naming the file. */
export function parseMetadataJson(bytes: Uint8Array, file: string): Record<string, unknown> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(new TextDecoder().decode(bytes));
  } catch (err) {
    throw new InputError(file, `is not valid JSON (${(err as Error).message}): corrupt Zarr metadata`);
  }
  if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) throw new InputError(file, 'is not a JSON object: corrupt Zarr metadata');
  return parsed as Record<string, unknown>;
}

function checkShape(values: unknown, what: string, file: string, allowZero: boolean): number[] {
  if (!Array.isArray(values) || values.length === 0 || values.length > MAX_RANK) {
    throw new InputError(file, `${what} must be a list of 1 to ${MAX_RANK} integers, got ${JSON.stringify(values)}`);
  }
  for (const v of values) {
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < (allowZero ? 0 : 1)) {
      throw new InputError(file, `${what} ${JSON.stringify(values)} holds ${JSON.stringify(v)}: every entry must be a ${allowZero ? 'non-negative' : 'positive'} integer`);
    }
  }
  return values as number[];
}

function checkCodecName(name: unknown, file: string): void {
  if (name === 'sharding_indexed') return;
  if (typeof name !== 'string' || !registry.has(name)) {
    throw new InputError(file, `uses the codec ${JSON.stringify(name)}, which blindspot cannot decode (known: ${[...registry.keys()].filter((k) => !k.includes('.')).join(', ')})`);
  }
}

/**
 * Reads and checks the array metadata at `arrayPath` of `store` (zarr.json, else .zarray); null when
 * there is none. Throws an InputError naming the metadata file and the problem.
 */
export async function checkZarrArrayMetadata(store: ByteStore, arrayPath: string): Promise<CheckedZarrMetadata | null> {
  const base = arrayPath === '/' ? '' : arrayPath.replace(/\/+$/, '');
  const v3Bytes = await store.get(`${base}/zarr.json`);
  if (v3Bytes) {
    const file = `${store.url}${base}/zarr.json`;
    const meta = parseMetadataJson(v3Bytes, file);
    if (meta.node_type !== 'array') return null;
    const shape = checkShape(meta.shape, 'shape', file, true);
    const grid = meta.chunk_grid as { name?: string; configuration?: { chunk_shape?: unknown } } | undefined;
    if (grid?.name !== 'regular') throw new InputError(file, `has chunk grid ${JSON.stringify(grid?.name)}; blindspot reads regular grids`);
    const chunks = checkShape(grid.configuration?.chunk_shape, 'chunk shape', file, false);
    const dtype = typeof meta.data_type === 'string' ? meta.data_type : JSON.stringify(meta.data_type);
    if (!Array.isArray(meta.codecs)) throw new InputError(file, 'has no codecs list');
    for (const codec of meta.codecs as Array<{ name?: unknown; configuration?: { codecs?: Array<{ name?: unknown }>; chunk_shape?: unknown } }>) {
      checkCodecName(codec?.name, file);
      if (codec?.name === 'sharding_indexed') {
        checkShape(codec.configuration?.chunk_shape, 'inner chunk shape', file, false);
        for (const inner of codec.configuration?.codecs ?? []) checkCodecName(inner?.name, file);
      }
    }
    return finish({ zarrVersion: 3, shape, chunks, dtype, file });
  }
  const v2Bytes = await store.get(`${base}/.zarray`);
  if (!v2Bytes) return null;
  const file = `${store.url}${base}/.zarray`;
  const meta = parseMetadataJson(v2Bytes, file);
  const shape = checkShape(meta.shape, 'shape', file, true);
  const chunks = checkShape(meta.chunks, 'chunks', file, false);
  const dtype = v2DtypeName(meta.dtype);
  const compressor = meta.compressor as { id?: unknown } | null | undefined;
  if (compressor) checkCodecName(compressor.id, file);
  for (const filter of (meta.filters as Array<{ id?: unknown }> | null | undefined) ?? []) {
    checkCodecName(typeof filter?.id === 'string' && !registry.has(filter.id) ? `numcodecs.${filter.id}` : filter?.id, file);
  }
  if (meta.order !== undefined && meta.order !== 'C' && meta.order !== 'F') throw new InputError(file, `has order ${JSON.stringify(meta.order)}; must be C or F`);
  return finish({ zarrVersion: 2, shape, chunks, dtype, file });
}

function finish(meta: CheckedZarrMetadata): CheckedZarrMetadata {
  const { shape, chunks, dtype, file } = meta;
  if (!SUPPORTED_DTYPES.has(dtype)) throw new InputError(file, `dtype ${dtype} is not supported (blindspot reads ${[...SUPPORTED_DTYPES].join(', ')})`);
  if (chunks.length !== shape.length) throw new InputError(file, `chunk shape [${chunks.join(', ')}] has ${chunks.length} dimensions, the shape [${shape.join(', ')}] ${shape.length}`);
  if (shape.some((s) => s === 0)) throw new InputError(file, `shape [${shape.join(', ')}] is empty: nothing to read`);
  const chunkVoxels = chunks.reduce((a, b) => a * b, 1);
  if (chunkVoxels > MAX_CHUNK_VOXELS) {
    throw new InputError(file, `chunk shape [${chunks.join(', ')}] has ${chunkVoxels.toExponential(2)} elements; blindspot decodes whole chunks of at most ${MAX_CHUNK_VOXELS} (${(MAX_CHUNK_VOXELS * dtypeBytes(dtype)) / 2 ** 30} GiB)`);
  }
  const chunkCount = shape.reduce((a, s, i) => a * Math.ceil(s / chunks[i]), 1);
  if (chunkCount > MAX_CHUNK_COUNT) throw new InputError(file, `shape [${shape.join(', ')}] in chunks [${chunks.join(', ')}] makes ${chunkCount.toExponential(2)} chunks, more than blindspot accepts (${MAX_CHUNK_COUNT})`);
  return meta;
}

/**
 * Checks a decoded chunk: `elements` values read for chunk `index` of an array whose chunks hold
 * `expected` (edge chunks are stored whole too). Anything else is a corrupt or truncated chunk.
 */
export function checkDecodedChunk(url: string, key: string, elements: number, expected: number, dtype: string): void {
  if (elements === expected) return;
  const bytes = dtypeBytes(dtype);
  throw new InputError(
    url,
    `chunk ${key} decodes to ${elements * bytes} bytes (${elements} ${dtype} values), its shape needs ${expected * bytes} (${expected}): the chunk is truncated or corrupt`,
  );
}
