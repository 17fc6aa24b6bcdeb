/**
 * Pieces shared by the format codecs: turning raw typed samples into a Volume (with the
 * NaN/Inf check every reader must do), collapsing grey-as-colour channels, converting a
 * Volume to a stored sample type (round + clip), and the atomic write.
 */
import { promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { InputError, OutputError } from '../core/errors.js';
import { sampleTypeRange, voxelCount, type SampleType, type Shape } from '../core/volume.js';

/**
 * Samples one whole-image read may hold (2^30: 4 GiB as float32). A header claiming more is refused
 * before anything is allocated; larger images stream (TIFF stacks, Zarr).
 */
export const MAX_IMAGE_SAMPLES = 2 ** 30;

/** Refuses (InputError) image dimensions a header gives that are not positive integers or exceed MAX_IMAGE_SAMPLES. */
export function checkImageSize(file: string, dims: readonly number[], what = 'image'): void {
  if (dims.some((d) => !Number.isSafeInteger(d) || d < 1)) {
    throw new InputError(file, `its header gives the ${what} size ${dims.join('x')}: zero or invalid width or height`);
  }
  const total = dims.reduce((a, b) => a * b, 1);
  if (total > MAX_IMAGE_SAMPLES) {
    throw new InputError(file, `its header gives the ${what} size ${dims.join('x')} (${total.toExponential(2)} samples), more than one in-memory read holds (${MAX_IMAGE_SAMPLES}); a lying header, or stream it (TIFF stack or Zarr)`);
  }
}

/** Any typed array a codec decodes samples into. */
export type SampleArray =
  | Uint8Array
  | Uint16Array
  | Int16Array
  | Int32Array
  | Float32Array
  | Float64Array
  | Int8Array
  | Uint32Array;

/** Byte size of one sample of each stored type. */
export const bytesPerSample: Record<SampleType, number> = {
  uint8: 1,
  uint16: 2,
  int16: 2,
  int32: 4,
  float32: 4,
  float64: 8,
};

/** "[z=0, y=2, x=5]" for flat index `i` of an array of `shape`. */
export function describeIndex(i: number, shape: readonly number[]): string {
  const names = shape.length === 3 ? ['z', 'y', 'x'] : shape.length === 2 ? ['y', 'x'] : shape.map((_, k) => `axis${k}`);
  const coords: number[] = new Array(shape.length);
  let rest = i;
  for (let k = shape.length - 1; k >= 0; k--) {
    coords[k] = rest % shape[k];
    rest = Math.floor(rest / shape[k]);
  }
  return '[' + coords.map((c, k) => `${names[k]}=${c}`).join(', ') + ']';
}

/**
 * Throws InputError if `data` holds NaN or +-Inf, saying how many and where the first is,
 * because one NaN silently poisons training (loss becomes NaN) and normalisation statistics.
 */
export function assertFinite(file: string, data: ArrayLike<number>, shape: readonly number[], what = 'the data'): void {
  let nan = 0;
  let inf = 0;
  let first = -1;
  for (let i = 0; i < data.length; i++) {
    const v = data[i];
    if (v - v !== 0) {
      // v - v is NaN exactly for NaN and +-Inf; this keeps the common path to one compare.
      if (Number.isNaN(v)) nan++;
      else inf++;
      if (first < 0) first = i;
    }
  }
  if (first >= 0) {
    const kinds = [nan ? `${nan} NaN` : '', inf ? `${inf} infinite` : ''].filter(Boolean).join(' and ');
    const firstValue = data[first];
    throw new InputError(
      file,
      `${what} contains ${kinds} value(s) of ${data.length}; the first (${firstValue}) is at ${describeIndex(first, shape)}. ` +
        'Replace or mask them (e.g. with the median) before denoising.',
    );
  }
}

/** Copies samples into float32, checking that nothing became infinite (float64 beyond float32 range). */
export function toFloat32(file: string, samples: ArrayLike<number>, shape: readonly number[]): Float32Array {
  const out = samples instanceof Float32Array ? samples : Float32Array.from(samples as ArrayLike<number>);
  assertFinite(file, samples, shape);
  if (!(samples instanceof Float32Array)) assertFinite(file, out, shape, 'the data, converted to float32,');
  return out;
}

/**
 * Several channels that are all equal (grey stored as RGB) collapse to one; a real colour image
 * is refused, because the denoisers here model one noisy channel and a silent RGB->grey mix
 * would change the noise statistics. `alpha`, when given, must be fully opaque.
 */
export function collapseChannels<T extends SampleArray>(
  file: string,
  interleaved: T,
  pixelCount: number,
  channels: number,
  width: number,
  opts: { alphaLast?: boolean; opaque?: number } = {},
): T {
  const where = (p: number): string => describeIndex(p, [pixelCount / width, width]);
  if (channels === 1) return interleaved;
  const colourChannels = opts.alphaLast ? channels - 1 : channels;
  const grey = new (interleaved.constructor as new (n: number) => T)(pixelCount);
  for (let p = 0; p < pixelCount; p++) {
    const base = p * channels;
    const v = interleaved[base];
    for (let c = 1; c < colourChannels; c++) {
      if (interleaved[base + c] !== v) {
        throw new InputError(
          file,
          `has ${colourChannels} colour channels that differ (first at ${where(p)}); it must be single-channel (greyscale). ` +
            'Convert it to grey or split the channels first.',
        );
      }
    }
    if (opts.alphaLast && opts.opaque !== undefined && interleaved[base + channels - 1] !== opts.opaque) {
      throw new InputError(file, `has a transparency (alpha) channel that is not fully opaque (first at ${where(p)}); it must be single-channel`);
    }
    grey[p] = v;
  }
  return grey;
}

/**
 * Converts float data to the integer or float array of `sampleType`. Integer types are rounded
 * (half away from zero) and clipped to range; NaN cannot be stored as an integer and is refused.
 */
export function toSampleArray(file: string, data: Float32Array, sampleType: SampleType): SampleArray {
  if (sampleType === 'float32') return data;
  if (sampleType === 'float64') return Float64Array.from(data);
  const [lo, hi] = sampleTypeRange(sampleType);
  const n = data.length;
  const out: SampleArray =
    sampleType === 'uint8'
      ? new Uint8Array(n)
      : sampleType === 'uint16'
        ? new Uint16Array(n)
        : sampleType === 'int16'
          ? new Int16Array(n)
          : new Int32Array(n);
  for (let i = 0; i < n; i++) {
    const v = data[i];
    if (Number.isNaN(v)) {
      throw new OutputError(file, `cannot store NaN (at flat index ${i}) as ${sampleType}; write a float type or fix the data`);
    }
    const r = v < 0 ? -Math.round(-v) : Math.round(v);
    out[i] = r < lo ? lo : r > hi ? hi : r;
  }
  return out;
}

export function checkVolumeShape(file: string, data: Float32Array, shape: Shape): void {
  if ((shape.length !== 2 && shape.length !== 3) || shape.some((s) => !Number.isInteger(s) || s < 1)) {
    throw new OutputError(file, `shape [${shape.join(', ')}] is not a 2D [Y, X] or 3D [Z, Y, X] shape of positive integers`);
  }
  if (voxelCount(shape) !== data.length) {
    throw new OutputError(file, `shape [${shape.join(', ')}] holds ${voxelCount(shape)} values but the data has ${data.length}`);
  }
}

let tempCounter = 0;

/**
 * Writes `bytes` to `file` via a temporary file in the same folder (same filesystem, so the
 * final rename is atomic): a crash leaves at most a stray `.tmp` file, never a truncated image
 * under the real name. Without `overwrite`, the final step is a hard link, which fails if the
 * name exists, so two writers racing for one name cannot clobber each other.
 */
export async function writeFileAtomic(file: string, bytes: Uint8Array | readonly Uint8Array[], overwrite: boolean): Promise<void> {
  const dir = path.dirname(path.resolve(file));
  if (!overwrite && (await exists(file))) {
    throw new OutputError(file, 'already exists; refusing to overwrite it (pass overwrite to replace it)');
  }
  const temp = path.join(dir, `.${path.basename(file)}.${process.pid}.${Date.now()}.${tempCounter++}.tmp`);
  let handle: FileHandle;
  try {
    handle = await fsp.open(temp, 'wx');
  } catch (err) {
    throw new OutputError(file, `cannot create a file in ${dir}: ${(err as Error).message}`, { cause: err });
  }
  try {
    try {
      for (const part of bytes instanceof Uint8Array ? [bytes] : bytes) await handle.write(part);
      await handle.sync();
    } finally {
      await handle.close();
    }
    if (overwrite) {
      await fsp.rename(temp, file);
    } else {
      try {
        await fsp.link(temp, file);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'EEXIST') throw new OutputError(file, 'already exists; refusing to overwrite it (pass overwrite to replace it)');
        if (code !== 'EPERM' && code !== 'ENOTSUP' && code !== 'EOPNOTSUPP' && code !== 'ENOSYS') throw err;
        // Filesystems without hard links: fall back to check-then-rename (tiny race window).
        if (await exists(file)) throw new OutputError(file, 'already exists; refusing to overwrite it (pass overwrite to replace it)');
        await fsp.rename(temp, file);
      }
    }
  } catch (err) {
    await fsp.rm(temp, { force: true });
    if (err instanceof OutputError) throw err;
    throw new OutputError(file, `could not be written: ${(err as Error).message}`, { cause: err });
  }
  await fsp.rm(temp, { force: true }); // after a successful link the temp name is a second link
}

/** Whether anything (a file, folder or link) is at `file`. */
export async function exists(file: string): Promise<boolean> {
  try {
    await fsp.lstat(file);
    return true;
  } catch {
    return false;
  }
}

/** Bytes of a Node Buffer as an exact-length ArrayBuffer view start, for DataView use. */
export function dataViewOf(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}
