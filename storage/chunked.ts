/**
 * The one chunked-array interface every streaming source and sink implements (Zarr v2/v3 on a
 * filesystem or S3, TIFF stacks, folders of frames). Nothing above storage/ knows where bytes live:
 * operators see shapes, chunk grids and float32 chunks.
 *
 * Conventions: C order; `shape`, `chunks` and chunk indices have one entry per axis in `axes`
 * order (e.g. t,c,z,y,x for OME-Zarr). Units are voxels unless an axis says otherwise.
 * Chunks are always exchanged WHOLE, with the nominal chunk shape: an edge chunk that sticks out
 * of the array is padded (reads: with the fill value; writes: the padding is ignored/stored as the
 * format requires). Writing whole chunks only is deliberate: zarrita's partial-chunk writes are
 * read-modify-write without locking, unsafe with concurrent writers.
 */
import type { SampleType } from '../core/volume.js';

export type AxisType = 'space' | 'time' | 'channel' | 'other';

export interface Axis {
  /** 'z' | 'y' | 'x' | 't' | 'c' or any NGFF axis name. */
  readonly name: string;
  readonly type: AxisType;
  /** Physical unit (NGFF unit name, e.g. 'micrometer', 'second'), if known. */
  readonly unit?: string;
}

/** Physical placement of voxel centres: position = translation + index * scale, per axis. */
export interface Placement {
  readonly scale: readonly number[];
  readonly translation: readonly number[];
}

export interface ArrayInfo {
  /** Where the array lives, as the user named it (path or URL), for messages and provenance. */
  readonly url: string;
  readonly shape: readonly number[];
  /** Nominal chunk shape (same rank as shape). */
  readonly chunks: readonly number[];
  readonly dtype: SampleType;
  readonly axes: readonly Axis[];
  /** From OME-Zarr metadata when present; else unit scale, zero translation. */
  readonly placement: Placement;
  /** Display window (omero) or other metadata to carry through; free-form. */
  readonly attributes?: Readonly<Record<string, unknown>>;
}

/** A readable chunked array. `readChunk` returns float32 values of the whole (padded) chunk. */
export interface ChunkedArrayReader {
  readonly info: ArrayInfo;
  /** Values of chunk `index` (one entry per axis), shape `info.chunks`, C order, converted to float32. */
  readChunk(index: readonly number[]): Promise<Float32Array>;
  /** Releases files/sockets. */
  close?(): Promise<void>;
}

/** A writable chunked array (created by the sink's `create`), whole chunks only. */
export interface ChunkedArrayWriter {
  readonly info: ArrayInfo;
  /**
   * Stores chunk `index` (shape `info.chunks`, C order). Values are converted to `info.dtype`
   * (rounded and clipped for integer types). Atomic: a reader sees the old chunk or the new one,
   * never a torn one (temp file + rename on a filesystem; a single PUT or completed multipart on S3).
   * Returns the bytes actually stored (encoded), so callers can record a checksum.
   */
  writeChunk(index: readonly number[], values: Float32Array): Promise<Uint8Array>;
  /** The stored (encoded) bytes of chunk `index`, or null if it has never been written. */
  readStoredChunk(index: readonly number[]): Promise<Uint8Array | null>;
  close?(): Promise<void>;
}

/** Number of chunks per axis. */
export function chunkGrid(info: Pick<ArrayInfo, 'shape' | 'chunks'>): number[] {
  return info.shape.map((n, axis) => Math.ceil(n / info.chunks[axis]));
}
