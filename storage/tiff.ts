/**
 * TIFF: reading through geotiff (strips or tiles, LZW/Deflate/PackBits/..., classic or BigTIFF,
 * multi-page -> [Z, Y, X]); writing with a small baseline writer of our own, because neither
 * sharp nor geotiff's writer makes multi-page 16-bit/float greyscale stacks: uncompressed
 * strips, one IFD per page, little-endian, plus an ImageJ description so Fiji opens a stack as one.
 * Which pages are planes (channels, slices, time points of a hyperstack or OME-TIFF) and the voxel
 * size: tiffLayout.ts.
 */
import { fromArrayBuffer, type GeoTIFFImage } from 'geotiff';
import { InputError, OutputError } from '../core/errors.js';
import type { ImageMetadata } from '../core/volume.js';
import type { SampleType, Shape } from '../core/volume.js';
import { bytesPerSample, checkImageSize, collapseChannels, type SampleArray } from './common.js';
import { layoutName, sizesText, tiffPlaneLayout, tiffStackPages } from './tiffLayout.js';

export interface DecodedTiff {
  /** Pages concatenated in Z order, each [Y, X]. */
  samples: SampleArray;
  shape: Shape;
  sampleType: SampleType;
  /** The first page's resolution tags and description, for an output to carry. */
  metadata: NonNullable<ImageMetadata['tiff']>;
}

/** A RATIONAL tag as geotiff gives it, as [numerator, denominator]; undefined when absent or unusable. */
function rationalPair(value: unknown): [number, number] | undefined {
  const v = value as ArrayLike<number> | number | undefined;
  if (v === undefined) return undefined;
  const pair: [number, number] = typeof v === 'number' ? [v, 1] : v.length >= 2 ? [v[0], v[1]] : [v[0], 1];
  if (!pair.every((n) => Number.isInteger(n) && n >= 0 && n <= 0xffffffff) || pair[1] === 0) return undefined;
  return pair;
}

/** The OME type name of a sample type (Pixels Type attribute). */
const OME_TYPE: Record<SampleType, string> = { uint8: 'uint8', uint16: 'uint16', int16: 'int16', int32: 'int32', float32: 'float', float64: 'double' };

/**
 * The description an output of `sampleType` carries: an ImageJ one as it was; OME-XML with its Pixels
 * Type (and byte order) rewritten to what is stored now; other text as it was.
 */
export function outputDescription(description: string, sampleType: SampleType): string {
  // Our own one-line description names the sample type: it follows the output's.
  if (/^blindspot [a-z0-9]+$/.test(description)) return `blindspot ${sampleType}`;
  if (!/<OME[\s>]/.test(description)) return description;
  return description.replace(/<Pixels\b[^>]*>/, (pixels) =>
    pixels.replace(/\bType="[^"]*"/, `Type="${OME_TYPE[sampleType]}"`).replace(/\bBigEndian="[^"]*"/, 'BigEndian="false"'),
  );
}

/** (bits, SampleFormat) -> our sample type; int8 and float16 widen losslessly. */
export function sampleTypeOf(bits: number, format: number): SampleType | null {
  if (format === 1 && bits === 8) return 'uint8';
  if (format === 1 && bits === 16) return 'uint16';
  if (format === 2 && bits === 8) return 'int16';
  if (format === 2 && bits === 16) return 'int16';
  if (format === 2 && bits === 32) return 'int32';
  if (format === 3 && (bits === 16 || bits === 32)) return 'float32';
  if (format === 3 && bits === 64) return 'float64';
  return null;
}

export const formatNames: Record<number, string> = { 1: 'unsigned integer', 2: 'signed integer', 3: 'float' };

export async function decodeTiff(file: string, bytes: Uint8Array): Promise<DecodedTiff> {
  const arrayBuffer = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer;
  try {
    const tiff = await fromArrayBuffer(arrayBuffer);
    const count = await tiff.getImageCount();
    const pages: GeoTIFFImage[] = [];
    for (let i = 0; i < count; i++) pages.push(await tiff.getImage(i));
    // Reduced-resolution copies (pyramids, thumbnails: NewSubfileType bit 0) are not extra Z slices,
    // nor are the channels and time points of an ImageJ hyperstack or an OME-TIFF.
    const layout = tiffPlaneLayout(file, pages);
    if (layout.sizes.c > 1 || layout.sizes.t > 1) {
      throw new InputError(
        file,
        `is ${layoutName(layout)} of ${sizesText(layout.sizes)}; whole-image reads take one channel and time point only: stream it and choose them with --channel and --time (denoise with a .zarr --out, train with --stream)`,
      );
    }
    const used = tiffStackPages(file, layout).map((i) => pages[i]);
    const first = used[0];
    const width = first.getWidth();
    const height = first.getHeight();
    const channels = first.getSamplesPerPixel();
    const bits = Number(first.getBitsPerSample(0));
    const format = Number(first.getSampleFormat(0) ?? 1);
    const sampleType = sampleTypeOf(bits, format);
    if (!sampleType) {
      throw new InputError(
        file,
        `unsupported TIFF sample type: ${bits}-bit ${formatNames[format] ?? `format ${format}`}; supported are 8/16-bit unsigned, 8/16/32-bit signed, 16/32/64-bit float`,
      );
    }
    const extraSamples: number[] = Array.from(first.fileDirectory.ExtraSamples ?? []);
    const alphaLast = channels > 1 && extraSamples.length > 0 && (extraSamples[extraSamples.length - 1] === 1 || extraSamples[extraSamples.length - 1] === 2);
    checkImageSize(file, [used.length, height, width, channels], 'TIFF stack (pages x height x width x channels)');
    const pixelsPerPage = width * height;
    const samples = allocate(sampleType, pixelsPerPage * used.length);
    for (let z = 0; z < used.length; z++) {
      const page = used[z];
      if (page.getWidth() !== width || page.getHeight() !== height || page.getSamplesPerPixel() !== channels) {
        throw new InputError(
          file,
          `page ${z} is ${page.getWidth()}x${page.getHeight()} with ${page.getSamplesPerPixel()} channel(s) but page 0 is ${width}x${height} with ${channels}; all pages of a stack must match`,
        );
      }
      if (Number(page.getBitsPerSample(0)) !== bits || Number(page.getSampleFormat(0) ?? 1) !== format) {
        throw new InputError(file, `page ${z} has a different sample type from page 0; all pages of a stack must match`);
      }
      const raster = (await page.readRasters({ interleave: true })) as unknown as SampleArray;
      if (raster.length !== pixelsPerPage * channels) {
        throw new InputError(file, `page ${z} decoded to ${raster.length} samples, expected ${pixelsPerPage * channels} (corrupt file)`);
      }
      const opaque = format === 3 ? 1 : 2 ** bits - 1;
      const grey = collapseChannels(file, raster, pixelsPerPage, channels, width, { alphaLast, opaque });
      samples.set(grey, z * pixelsPerPage);
    }
    const shape: Shape = used.length === 1 ? [height, width] : [used.length, height, width];
    const directory = first.fileDirectory as Record<string, unknown>;
    const xResolution = rationalPair(directory.XResolution);
    const yResolution = rationalPair(directory.YResolution);
    const description = typeof directory.ImageDescription === 'string' ? directory.ImageDescription.replace(/\0+$/, '') : undefined;
    const metadata: DecodedTiff['metadata'] = {
      ...(xResolution ? { xResolution } : {}),
      ...(yResolution ? { yResolution } : {}),
      ...(typeof directory.ResolutionUnit === 'number' ? { resolutionUnit: directory.ResolutionUnit } : {}),
      ...(description ? { description } : {}),
    };
    return { samples, shape, sampleType, metadata };
  } catch (err) {
    if (err instanceof InputError) throw err;
    throw new InputError(file, `is not a readable TIFF (corrupt or truncated): ${(err as Error).message}`, { cause: err });
  }
}

function allocate(sampleType: SampleType, n: number): SampleArray {
  switch (sampleType) {
    case 'uint8':
      return new Uint8Array(n);
    case 'uint16':
      return new Uint16Array(n);
    case 'int16':
      return new Int16Array(n);
    case 'int32':
      return new Int32Array(n);
    case 'float32':
      return new Float32Array(n);
    case 'float64':
      return new Float64Array(n);
  }
}

const sampleFormatCode: Record<SampleType, number> = { uint8: 1, uint16: 1, int16: 2, int32: 2, float32: 3, float64: 3 };

const SHORT = 3;
const LONG = 4;
const ASCII = 2;
const RATIONAL = 5;

interface Tag {
  code: number;
  /** RATIONAL values are flat [numerator, denominator] pairs. */
  type: typeof SHORT | typeof LONG | typeof ASCII | typeof RATIONAL;
  values: number[] | string;
}

/**
 * Baseline little-endian TIFF of a 2D image or a 3D stack (one page per Z).
 * Layout [header | all pixel data, page after page, contiguous | IFDs]: contiguous data is
 * what ImageJ expects when the description says images=N.
 */
export function encodeTiff(file: string, samples: SampleArray, shape: Shape, sampleType: SampleType, metadata?: ImageMetadata['tiff']): Uint8Array[] {
  const [pages, height, width] = shape.length === 3 ? shape : [1, shape[0], shape[1]];
  const pageSize = height * width;
  return encodeTiffPages(
    file,
    Array.from({ length: pages }, (_, z) => ({ samples: samples.subarray(z * pageSize, (z + 1) * pageSize) as SampleArray, width, height })),
    sampleType,
    metadata,
  );
}

/** Pages may differ in size here (a general multi-page file); encodeTiff always passes equal ones. */
export function encodeTiffPages(
  file: string,
  pages: readonly { samples: SampleArray; width: number; height: number }[],
  sampleType: SampleType,
  metadata?: ImageMetadata['tiff'],
): Uint8Array[] {
  const sampleBytes = bytesPerSample[sampleType];
  const dataStart = 8;
  const pageStarts: number[] = [];
  let dataEnd = dataStart;
  for (const page of pages) {
    if (page.samples.length !== page.width * page.height) throw new OutputError(file, 'page sample count does not match its size');
    pageStarts.push(dataEnd);
    dataEnd += page.samples.length * sampleBytes;
  }
  const description = metadata?.description
    ? `${outputDescription(metadata.description, sampleType)}\0`
    : pages.length > 1
      ? `ImageJ=1.11a\nimages=${pages.length}\nslices=${pages.length}\nloop=false\n\0`
      : `blindspot ${sampleType}\0`;
  // Kept from the input: the pixel size (XResolution/YResolution are pixels per ResolutionUnit).
  const resolution: Tag[] = [
    ...(metadata?.xResolution ? [{ code: 282, type: RATIONAL, values: [...metadata.xResolution] } as Tag] : []),
    ...(metadata?.yResolution ? [{ code: 283, type: RATIONAL, values: [...metadata.yResolution] } as Tag] : []),
    ...(metadata?.resolutionUnit !== undefined ? [{ code: 296, type: SHORT, values: [metadata.resolutionUnit] } as Tag] : []),
  ];
  const ifds: Uint8Array[] = [];
  const firstIfdOffset = dataEnd + (dataEnd & 1);
  let cursor = firstIfdOffset;
  pages.forEach(({ width, height }, z) => {
    const rowBytes = width * sampleBytes;
    const rowsPerStrip = Math.max(1, Math.min(height, Math.floor(262144 / rowBytes)));
    const stripOffsets: number[] = [];
    const stripCounts: number[] = [];
    for (let row = 0; row < height; row += rowsPerStrip) {
      stripOffsets.push(pageStarts[z] + row * rowBytes);
      stripCounts.push(Math.min(rowsPerStrip, height - row) * rowBytes);
    }
    const tags: Tag[] = [
      { code: 254, type: LONG, values: [0] },
      { code: 256, type: LONG, values: [width] },
      { code: 257, type: LONG, values: [height] },
      { code: 258, type: SHORT, values: [sampleBytes * 8] },
      { code: 259, type: SHORT, values: [1] },
      { code: 262, type: SHORT, values: [1] },
      ...(z === 0 ? [{ code: 270, type: ASCII, values: description } as Tag] : []),
      { code: 273, type: LONG, values: stripOffsets },
      { code: 277, type: SHORT, values: [1] },
      { code: 278, type: LONG, values: [rowsPerStrip] },
      { code: 279, type: LONG, values: stripCounts },
      ...resolution.filter((t) => t.code < 284),
      { code: 284, type: SHORT, values: [1] },
      ...resolution.filter((t) => t.code > 284),
      { code: 339, type: SHORT, values: [sampleFormatCode[sampleType]] },
    ];
    const ifd = encodeIfd(tags, cursor, z === pages.length - 1);
    ifds.push(ifd);
    cursor += ifd.length;
  });
  if (cursor > 0xffffffff) {
    throw new OutputError(file, `would be ${cursor} bytes, beyond the 4 GiB limit of classic TIFF; write .npy instead or split the stack`);
  }
  const header = new Uint8Array(8);
  const hv = new DataView(header.buffer);
  header[0] = 0x49;
  header[1] = 0x49;
  hv.setUint16(2, 42, true);
  hv.setUint32(4, firstIfdOffset, true);
  return [header, ...pages.map((p) => littleEndianBytes(p.samples, sampleType)), new Uint8Array(firstIfdOffset - dataEnd), ...ifds];
}

/** One IFD at `offset` with its out-of-line values right after it; links to the next IFD unless `last`. */
function encodeIfd(tags: Tag[], offset: number, last: boolean): Uint8Array {
  const entriesBytes = 2 + tags.length * 12 + 4;
  const typeSize = { [SHORT]: 2, [LONG]: 4, [ASCII]: 1, [RATIONAL]: 4 } as const;
  let extraBytes = 0;
  for (const tag of tags) {
    const size = typeSize[tag.type] * tag.values.length;
    if (size > 4) extraBytes += size + (size & 1);
  }
  const out = new Uint8Array(entriesBytes + extraBytes);
  const view = new DataView(out.buffer);
  view.setUint16(0, tags.length, true);
  let extra = entriesBytes;
  tags.forEach((tag, i) => {
    const entry = 2 + i * 12;
    const count = tag.type === RATIONAL ? tag.values.length / 2 : tag.values.length;
    const size = typeSize[tag.type] * tag.values.length;
    view.setUint16(entry, tag.code, true);
    view.setUint16(entry + 2, tag.type, true);
    view.setUint32(entry + 4, count, true);
    let at = entry + 8;
    if (size > 4) {
      view.setUint32(entry + 8, offset + extra, true);
      at = extra;
      extra += size + (size & 1);
    }
    for (let k = 0; k < tag.values.length; k++) {
      const value = tag.values[k];
      if (tag.type === ASCII) out[at + k] = (value as string).charCodeAt(0);
      else if (tag.type === SHORT) view.setUint16(at + 2 * k, value as number, true);
      else view.setUint32(at + 4 * k, value as number, true);
    }
  });
  view.setUint32(2 + tags.length * 12, last ? 0 : offset + out.length + (out.length & 1), true);
  if (out.length & 1) {
    const padded = new Uint8Array(out.length + 1);
    padded.set(out);
    return padded;
  }
  return out;
}

/** Sample bytes in little-endian order (a plain view on little-endian hosts). */
export function littleEndianBytes(samples: SampleArray, sampleType: SampleType): Uint8Array {
  const size = bytesPerSample[sampleType];
  const view = new Uint8Array(samples.buffer, samples.byteOffset, samples.byteLength);
  if (size === 1 || hostIsLittleEndian) return view;
  const swapped = new Uint8Array(view.length);
  for (let i = 0; i < view.length; i += size) for (let b = 0; b < size; b++) swapped[i + b] = view[i + size - 1 - b];
  return swapped;
}

const hostIsLittleEndian = new Uint8Array(Uint16Array.of(1).buffer)[0] === 1;
