/**
 * Whole-image file I/O: PNG, TIFF (multi-page -> 3D), FITS (.fits/.fit, gzipped or not) and
 * NumPy .npy, read into a float32 Volume and written back with a chosen sample type.
 * The format comes from the extension and must agree with the file's magic bytes, so a
 * mislabelled or corrupt file is reported as such instead of decoding to garbage.
 */
import { promises as fsp } from 'node:fs';
import { InputError, OutputError } from '../core/errors.js';
import { is3D, type SampleType, type Volume } from '../core/volume.js';
import { checkVolumeShape, toFloat32, toSampleArray, writeFileAtomic } from './common.js';
import { decodeFits, encodeFits, isGzip, looksLikeFits } from './fits.js';
import { formatOf, supportedExtensions, type ImageFormat } from './formats.js';
import { decodeNpy, encodeNpy, npyMagic } from './npy.js';
import { decodePng, encodePng, pngSignature } from './png.js';
import { decodeTiff, encodeTiff } from './tiff.js';

export { expandInputs } from './inputs.js';
export { supportedExtensions, isSupportedImage, formatOf, type ImageFormat } from './formats.js';

const formatNames: Record<ImageFormat, string> = { png: 'PNG', tiff: 'TIFF', fits: 'FITS', npy: 'NumPy .npy' };

function startsWith(bytes: Uint8Array, magic: ArrayLike<number>): boolean {
  if (bytes.length < magic.length) return false;
  for (let i = 0; i < magic.length; i++) if (bytes[i] !== magic[i]) return false;
  return true;
}

/** The format the bytes themselves announce, or null if none of ours. */
function sniffFormat(bytes: Uint8Array): ImageFormat | null {
  if (startsWith(bytes, pngSignature)) return 'png';
  if (startsWith(bytes, [0x49, 0x49, 42, 0]) || startsWith(bytes, [0x4d, 0x4d, 0, 42])) return 'tiff';
  if (startsWith(bytes, [0x49, 0x49, 43, 0]) || startsWith(bytes, [0x4d, 0x4d, 0, 43])) return 'tiff'; // BigTIFF
  if (startsWith(bytes, npyMagic)) return 'npy';
  if (looksLikeFits(bytes)) return 'fits';
  return null;
}

function describeStart(bytes: Uint8Array): string {
  const head = Array.from(bytes.subarray(0, 8));
  const printable = head.every((b) => b === 9 || b === 10 || b === 13 || (b >= 32 && b < 127));
  return printable ? JSON.stringify(String.fromCharCode(...head)) : head.map((b) => b.toString(16).padStart(2, '0')).join(' ');
}

/** Reads a 2D image or a 3D stack (multi-page TIFF, 3D .npy, FITS cube) into memory. */
export async function readImage(file: string): Promise<Volume> {
  const format = formatOf(file);
  if (!format) throw new InputError(file, `has an unsupported file type; supported extensions are ${supportedExtensions.join(' ')}`);
  let bytes: Uint8Array;
  try {
    bytes = await fsp.readFile(file);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const problem = code === 'ENOENT' ? 'does not exist' : code === 'EISDIR' ? 'is a folder, not an image file' : `cannot be read: ${(err as Error).message}`;
    throw new InputError(file, problem, { cause: err });
  }
  if (bytes.length === 0) throw new InputError(file, 'is empty (0 bytes)');

  const announced = format === 'fits' && isGzip(bytes) ? 'fits' : sniffFormat(bytes);
  if (announced !== format) {
    throw new InputError(
      file,
      announced
        ? `has a ${formatNames[format]} extension but its content is ${formatNames[announced]}; rename it`
        : `is not a valid ${formatNames[format]} file (corrupt, or another kind of file renamed): it starts with ${describeStart(bytes)}`,
    );
  }

  switch (format) {
    case 'png': {
      const png = decodePng(file, bytes);
      return { data: Float32Array.from(png.samples), shape: png.shape, sampleType: png.sampleType };
    }
    case 'tiff': {
      const tiff = await decodeTiff(file, bytes);
      return { data: toFloat32(file, tiff.samples, tiff.shape), shape: tiff.shape, sampleType: tiff.sampleType, metadata: { tiff: tiff.metadata } };
    }
    case 'fits': {
      const fits = decodeFits(file, bytes);
      return { data: fits.data, shape: fits.shape, sampleType: fits.sampleType, metadata: { fitsCards: fits.cards } };
    }
    case 'npy':
      return decodeNpy(file, bytes);
  }
}

/**
 * Writes a Volume. `sampleType` (default: volume.sampleType) chooses the stored type; integer
 * types are rounded and clipped to range. Refuses (OutputError) to overwrite an existing file
 * unless `overwrite`. Writes a temp file in the same folder, then renames, so a crash never
 * leaves a partial file under the real name.
 * PNG: 2D uint8/uint16. TIFF: 2D or 3D (one page per Z), any sample type. FITS (.fits, .fit,
 * .fits.gz, .fit.gz): 2D or 3D, any type. .npy: 2D or 3D, any type.
 */
/**
 * Writes `volume` in the format of `file`'s extension. Its metadata goes back where the format holds it
 * (FITS header cards, TIFF resolution and description); `history` (what was done) becomes FITS HISTORY.
 */
export async function writeImage(file: string, volume: Volume, opts: { sampleType?: SampleType; overwrite?: boolean; history?: string } = {}): Promise<void> {
  const format = formatOf(file);
  if (!format) throw new OutputError(file, `has an unsupported file type; supported extensions are ${supportedExtensions.join(' ')}`);
  const sampleType = opts.sampleType ?? volume.sampleType;
  checkVolumeShape(file, volume.data, volume.shape);
  if (format === 'png') {
    if (is3D(volume.shape)) throw new OutputError(file, `PNG holds one 2D image but the volume is 3D [${volume.shape.join(', ')}]; write .tif or .npy for a stack`);
    if (sampleType !== 'uint8' && sampleType !== 'uint16') {
      throw new OutputError(file, `PNG can store only uint8 or uint16, not ${sampleType}; write .tif or .npy for float data, or choose uint8/uint16`);
    }
  }
  const samples = toSampleArray(file, volume.data, sampleType);
  let bytes: Uint8Array | Uint8Array[];
  switch (format) {
    case 'png':
      bytes = encodePng(file, samples, volume.shape as readonly [number, number], sampleType);
      break;
    case 'tiff':
      bytes = encodeTiff(file, samples, volume.shape, sampleType, volume.metadata?.tiff);
      break;
    case 'fits':
      bytes = encodeFits(file, samples, volume.shape, sampleType, file.toLowerCase().endsWith('.gz'), volume.metadata?.fitsCards, opts.history);
      break;
    case 'npy':
      bytes = encodeNpy(samples, volume.shape, sampleType);
      break;
  }
  await writeFileAtomic(file, bytes, opts.overwrite ?? false);
}
