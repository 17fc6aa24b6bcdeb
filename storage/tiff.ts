/**
 * TIFF: reading through geotiff (strips or tiles, LZW/Deflate/PackBits/..., classic or BigTIFF,
 * multi-page -> [Z, Y, X]); writing with a small baseline writer of our own, because neither
 * sharp nor geotiff's writer makes multi-page 16-bit/float greyscale stacks: uncompressed
 * strips, one IFD per page, little-endian, plus an ImageJ description so Fiji opens a stack as one.
 */
import path from 'node:path';
import { fromArrayBuffer, type GeoTIFFImage } from 'geotiff';
import { InputError, OutputError } from '../core/errors.js';
import type { ImageMetadata } from '../core/volume.js';
import type { SampleType, Shape } from '../core/volume.js';
import { bytesPerSample, checkImageSize, collapseChannels, type SampleArray } from './common.js';

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

// ---------------------------------------------------------------------------------------------
// Plane layout: which page holds which channel, slice and time point, and the voxel size, from an
// ImageJ hyperstack description or OME-XML in the first page's ImageDescription. Without either,
// every full-resolution page is one z and the voxel is 1 x 1 x 1 with no unit.

export interface TiffPlaneSizes {
  readonly c: number;
  readonly z: number;
  readonly t: number;
}

export interface TiffPlaneLayout {
  /** What described the pages: nothing, an ImageJ description, or OME-XML. */
  readonly source: 'plain' | 'imagej' | 'ome';
  readonly sizes: TiffPlaneSizes;
  /** Index in the file's IFD chain of plane (c, z, t); -1 where the metadata maps no page to it. */
  pageOf(c: number, z: number, t: number): number;
  /** Voxel size [z, y, x] in `units` (1 where the file gives none). */
  readonly scale: readonly [number, number, number];
  /** Position of voxel [0, 0, 0] (ImageJ's origin), in `units`. */
  readonly translation: readonly [number, number, number];
  /** NGFF unit names [z, y, x]; undefined where the size is in voxels or in a unit NGFF does not name. */
  readonly units: readonly [string | undefined, string | undefined, string | undefined];
}

export interface TiffPlaneChoice {
  channel?: number;
  time?: number;
}

/** The subset of a geotiff page the layout needs. */
interface TiffPage {
  readonly fileDirectory: Record<string, unknown>;
  getWidth(): number;
  getHeight(): number;
  getSamplesPerPixel(): number;
}

/** Length units as ImageJ, OME and people write them -> NGFF (UDUNITS-2) names. */
const lengthUnits: Record<string, string> = {
  micron: 'micrometer',
  microns: 'micrometer',
  um: 'micrometer',
  '\u00b5m': 'micrometer',
  '\u03bcm': 'micrometer',
  micrometer: 'micrometer',
  micrometre: 'micrometer',
  nm: 'nanometer',
  nanometer: 'nanometer',
  nanometre: 'nanometer',
  mm: 'millimeter',
  millimeter: 'millimeter',
  millimetre: 'millimeter',
  cm: 'centimeter',
  centimeter: 'centimeter',
  centimetre: 'centimeter',
  m: 'meter',
  meter: 'meter',
  metre: 'meter',
  km: 'kilometer',
  pm: 'picometer',
  '\u00c5': 'angstrom',
  '\u212b': 'angstrom',
  angstrom: 'angstrom',
  in: 'inch',
  inch: 'inch',
};

/** NGFF name of a length unit; undefined for pixels and for units NGFF has no name for. */
export function ngffLengthUnit(unit: string | undefined): string | undefined {
  if (unit === undefined) return undefined;
  return lengthUnits[unit.trim()] ?? lengthUnits[unit.trim().toLowerCase()];
}

/** Pages that are full-resolution images (reduced-resolution copies, NewSubfileType bit 0, are not planes). */
function fullResolutionPages(pages: readonly TiffPage[]): number[] {
  const full = pages.flatMap((p, i) => (Number(p.fileDirectory.NewSubfileType ?? 0) & 1 ? [] : [i]));
  return full.length > 0 ? full : pages.map((_, i) => i);
}

function descriptionOf(page: TiffPage): string {
  const value = page.fileDirectory.ImageDescription;
  return typeof value === 'string' ? value.replace(/\0+$/, '') : '';
}

/** A RATIONAL tag (geotiff: [numerator, denominator]) or a plain number; undefined when absent. */
function rationalTag(page: TiffPage, name: string): number | undefined {
  const value = page.fileDirectory[name] as ArrayLike<number> | number | undefined;
  if (value === undefined) return undefined;
  if (typeof value === 'number') return value;
  return value.length >= 2 ? value[0] / value[1] : value[0];
}

/** Voxel side from a resolution tag (pixels per unit). */
function sideFromResolution(file: string, page: TiffPage, name: 'XResolution' | 'YResolution'): number | undefined {
  const perUnit = rationalTag(page, name);
  if (perUnit === undefined) return undefined;
  if (!Number.isFinite(perUnit) || perUnit <= 0) throw new InputError(file, `has ${name} ${perUnit} pixels per unit; it must be a positive number`);
  return 1 / perUnit;
}

/** Plane order: C fastest, then Z, then T (ImageJ's hyperstack order). */
function czt(sizes: TiffPlaneSizes): (c: number, z: number, t: number) => number {
  return (c, z, t) => (t * sizes.z + z) * sizes.c + c;
}

export function tiffPlaneLayout(file: string, pages: readonly TiffPage[]): TiffPlaneLayout {
  const description = pages.length ? descriptionOf(pages[0]) : '';
  if (description.startsWith('ImageJ=')) return imageJLayout(file, pages, description);
  if (/^\s*</.test(description) && /<(?:[\w.-]+:)?OME[\s>]/.test(description)) return omeLayout(file, pages, description);
  const full = fullResolutionPages(pages);
  return {
    source: 'plain',
    sizes: { c: 1, z: full.length, t: 1 },
    pageOf: (c, z, t) => (c === 0 && t === 0 && z < full.length ? full[z] : -1),
    scale: [1, 1, 1],
    translation: [0, 0, 0],
    units: [undefined, undefined, undefined],
  };
}

function imageJLayout(file: string, pages: readonly TiffPage[], description: string): TiffPlaneLayout {
  const fields = new Map<string, string>();
  for (const line of description.split(/\r?\n/)) {
    const eq = line.indexOf('=');
    if (eq > 0) fields.set(line.slice(0, eq).trim(), line.slice(eq + 1).trim().replace(/\\u([0-9a-fA-F]{4})/g, (_, hex: string) => String.fromCharCode(parseInt(hex, 16))));
  }
  const count = (key: string): number | undefined => {
    const text = fields.get(key);
    if (text === undefined) return undefined;
    const n = Number(text);
    if (!Number.isInteger(n) || n < 1) throw new InputError(file, `has an ImageJ description with ${key}=${text}, not a positive whole number`);
    return n;
  };
  const number = (key: string): number | undefined => {
    const text = fields.get(key);
    if (text === undefined) return undefined;
    const n = Number(text);
    if (!Number.isFinite(n)) throw new InputError(file, `has an ImageJ description with ${key}=${text}, not a number`);
    return n;
  };
  const full = fullResolutionPages(pages);
  const images = count('images') ?? full.length;
  const c = count('channels') ?? 1;
  const t = count('frames') ?? 1;
  const z = count('slices') ?? images / (c * t);
  if (!Number.isInteger(z) || c * z * t !== images) {
    throw new InputError(
      file,
      `has an ImageJ description of ${c} channels x ${fields.get('slices') ?? '?'} slices x ${t} frames that does not multiply to its images=${images}`,
    );
  }
  if (full.length !== images) {
    const hint =
      full.length === 1
        ? ': ImageJ saves stacks over 4 GiB this way (one page directory, the planes stored back to back), which blindspot does not read; save it as OME-TIFF (Bio-Formats) or convert it to OME-Zarr'
        : '';
    throw new InputError(file, `has an ImageJ description of images=${images} (${c} channels x ${z} slices x ${t} frames) but ${full.length} page(s)${hint}`);
  }
  // ImageJ's own units; without one, the resolution unit tag (2 inch, 3 centimetre), else uncalibrated.
  const resolutionUnit = Number(pages[0].fileDirectory.ResolutionUnit ?? 1);
  const unitText = fields.get('unit') ?? (resolutionUnit === 3 ? 'cm' : resolutionUnit === 2 ? 'inch' : undefined);
  const calibrated = unitText !== undefined && !/^(pixels?|)$/i.test(unitText);
  const sizes = { c, z, t };
  const order = czt(sizes);
  if (!calibrated) {
    return { source: 'imagej', sizes, pageOf: planeLookup(sizes, (cc, zz, tt) => full[order(cc, zz, tt)]), scale: [1, 1, 1], translation: [0, 0, 0], units: [undefined, undefined, undefined] };
  }
  const sx = sideFromResolution(file, pages[0], 'XResolution') ?? 1;
  const sy = sideFromResolution(file, pages[0], 'YResolution') ?? sx;
  const sz = number('spacing') ?? 1;
  if (sz <= 0) throw new InputError(file, `has an ImageJ description with spacing=${sz}; the slice spacing must be positive`);
  const unit = ngffLengthUnit(unitText);
  const scale: [number, number, number] = [sz, sy, sx];
  // ImageJ's origin is the pixel index of the physical origin.
  const origin = [number('zorigin') ?? 0, number('yorigin') ?? 0, number('xorigin') ?? 0];
  const translation = scale.map((s, axis) => (origin[axis] === 0 ? 0 : -origin[axis] * s)) as [number, number, number];
  const units: [string | undefined, string | undefined, string | undefined] = [
    fields.has('zunit') ? ngffLengthUnit(fields.get('zunit')) : unit,
    fields.has('yunit') ? ngffLengthUnit(fields.get('yunit')) : unit,
    unit,
  ];
  return { source: 'imagej', sizes, pageOf: planeLookup(sizes, (cc, zz, tt) => full[order(cc, zz, tt)]), scale, translation, units };
}

function planeLookup(sizes: TiffPlaneSizes, page: (c: number, z: number, t: number) => number): TiffPlaneLayout['pageOf'] {
  return (c, z, t) => (c >= 0 && c < sizes.c && z >= 0 && z < sizes.z && t >= 0 && t < sizes.t ? page(c, z, t) : -1);
}

// A few attributes of a few elements: a regular-expression reader is enough for OME-XML's flat
// Image/Pixels/TiffData structure, and needs no XML dependency.

interface XmlElement {
  attributes: Map<string, string>;
  body: string;
}

function decodeXmlText(text: string): string {
  return text.replace(/&(lt|gt|quot|apos|amp|#\d+|#x[0-9a-fA-F]+);/g, (_, name: string) => {
    if (name === 'lt') return '<';
    if (name === 'gt') return '>';
    if (name === 'quot') return '"';
    if (name === 'apos') return "'";
    if (name === 'amp') return '&';
    return String.fromCodePoint(name[1] === 'x' ? parseInt(name.slice(2), 16) : parseInt(name.slice(1), 10));
  });
}

/** Elements named `name` (any namespace prefix), with their attributes (local names) and inner text. */
function xmlElements(xml: string, name: string): XmlElement[] {
  const pattern = new RegExp(`<(?:[\\w.-]+:)?${name}(?=[\\s/>])([^>]*?)(?:/>|>([\\s\\S]*?)</(?:[\\w.-]+:)?${name}\\s*>)`, 'g');
  return Array.from(xml.matchAll(pattern), (m) => {
    const attributes = new Map<string, string>();
    for (const a of m[1].matchAll(/([\w:.-]+)\s*=\s*(?:"([^"]*)"|'([^']*)')/g)) attributes.set(a[1].replace(/^[\w.-]+:/, ''), decodeXmlText(a[2] ?? a[3]));
    return { attributes, body: m[2] ?? '' };
  });
}

const dimensionOrders = ['XYZCT', 'XYZTC', 'XYCTZ', 'XYCZT', 'XYTCZ', 'XYTZC'];

function omeLayout(file: string, pages: readonly TiffPage[], xml: string): TiffPlaneLayout {
  const base = path.basename(file);
  if (xmlElements(xml, 'BinaryOnly').length) {
    const companion = xmlElements(xml, 'BinaryOnly')[0].attributes.get('MetadataFile');
    throw new InputError(file, `is part of a multi-file OME-TIFF whose metadata lives in ${companion ?? 'a companion file'}; blindspot reads single-file OME-TIFFs: convert it to one OME-TIFF or to OME-Zarr (e.g. bfconvert, bioformats2raw)`);
  }
  const images = xmlElements(xml, 'Image');
  if (images.length !== 1) {
    throw new InputError(file, `holds ${images.length} images (series) in its OME-XML; blindspot reads OME-TIFFs of one image: export the series you want on its own`);
  }
  const pixels = xmlElements(images[0].body, 'Pixels')[0];
  if (!pixels) throw new InputError(file, 'has OME-XML without a Pixels element');
  const attr = pixels.attributes;
  const size = (key: string, fallback?: number): number => {
    const text = attr.get(key);
    const n = text === undefined ? fallback : Number(text);
    if (n === undefined || !Number.isInteger(n) || n < 1) throw new InputError(file, `has OME-XML Pixels ${key}=${text ?? '(missing)'}, not a positive whole number`);
    return n;
  };
  const order = attr.get('DimensionOrder') ?? '';
  if (!dimensionOrders.includes(order)) throw new InputError(file, `has OME-XML DimensionOrder=${order || '(missing)'}; expected one of ${dimensionOrders.join(', ')}`);
  const [width, height] = [size('SizeX'), size('SizeY')];
  const first = pages[0];
  if (width !== first.getWidth() || height !== first.getHeight()) {
    throw new InputError(file, `has OME-XML SizeX=${width} SizeY=${height} but its first page is ${first.getWidth()}x${first.getHeight()}`);
  }
  // An RGB plane is one page holding several channels (Channel SamplesPerPixel).
  const samplesPerPixel = first.getSamplesPerPixel();
  const sizeC = size('SizeC', 1);
  if (sizeC % samplesPerPixel !== 0) throw new InputError(file, `has OME-XML SizeC=${sizeC}, not a multiple of its ${samplesPerPixel} samples per pixel`);
  const sizes = { c: sizeC / samplesPerPixel, z: size('SizeZ', 1), t: size('SizeT', 1) };
  const extent: Record<string, number> = { Z: sizes.z, C: sizes.c, T: sizes.t };
  const letters = order.slice(2).split('');
  const planeIndex = (index: Record<string, number>): number => index[letters[0]] + extent[letters[0]] * (index[letters[1]] + extent[letters[1]] * index[letters[2]]);
  const planeCount = sizes.c * sizes.z * sizes.t;
  const pageOfPlane = new Int32Array(planeCount).fill(-1);
  const tiffData = xmlElements(pixels.body, 'TiffData');
  if (!tiffData.length) {
    if (pages.length < planeCount) {
      throw new InputError(file, `has OME-XML of ${sizes.c} channels x ${sizes.z} slices x ${sizes.t} time points (${planeCount} planes) but ${pages.length} page(s)`);
    }
    for (let p = 0; p < planeCount; p++) pageOfPlane[p] = p;
  }
  const fileUuid = xmlElements(xml, 'OME')[0]?.attributes.get('UUID');
  const integer = (e: XmlElement, key: string, fallback: number): number => {
    const text = e.attributes.get(key);
    const n = text === undefined ? fallback : Number(text);
    if (!Number.isInteger(n) || n < 0) throw new InputError(file, `has OME-XML TiffData ${key}=${text}, not a whole number`);
    return n;
  };
  for (const entry of tiffData) {
    const uuid = xmlElements(entry.body, 'UUID')[0];
    if (uuid) {
      const otherName = uuid.attributes.get('FileName');
      const otherUuid = uuid.body.trim();
      if ((otherName !== undefined && otherName !== base) || (otherName === undefined && fileUuid !== undefined && otherUuid && otherUuid !== fileUuid)) {
        throw new InputError(file, `is part of a multi-file OME-TIFF (planes in ${otherName ?? otherUuid}); blindspot reads single-file OME-TIFFs: convert it to one OME-TIFF or to OME-Zarr (e.g. bfconvert, bioformats2raw)`);
      }
    }
    const ifd = integer(entry, 'IFD', 0);
    const start = planeIndex({ Z: integer(entry, 'FirstZ', 0), C: integer(entry, 'FirstC', 0), T: integer(entry, 'FirstT', 0) });
    // Defaults from the OME schema: one page when IFD is given, else every page of the file.
    const n = integer(entry, 'PlaneCount', entry.attributes.has('IFD') ? 1 : pages.length);
    for (let k = 0; k < n && start + k < planeCount; k++) {
      if (ifd + k >= pages.length) throw new InputError(file, `has OME-XML TiffData pointing at page ${ifd + k}, but the file has ${pages.length} page(s)`);
      pageOfPlane[start + k] = ifd + k;
    }
  }
  const physical = (axis: 'X' | 'Y' | 'Z'): { side: number; unit: string | undefined } => {
    const text = attr.get(`PhysicalSize${axis}`);
    if (text === undefined) return { side: 1, unit: undefined };
    const side = Number(text);
    if (!Number.isFinite(side) || side <= 0) throw new InputError(file, `has OME-XML PhysicalSize${axis}=${text}; it must be a positive number`);
    return { side, unit: ngffLengthUnit(attr.get(`PhysicalSize${axis}Unit`) ?? '\u00b5m') };
  };
  const [pz, py, px] = [physical('Z'), physical('Y'), physical('X')];
  return {
    source: 'ome',
    sizes,
    pageOf: planeLookup(sizes, (c, z, t) => pageOfPlane[planeIndex({ Z: z, C: c, T: t })]),
    scale: [pz.side, py.side, px.side],
    translation: [0, 0, 0],
    units: [pz.unit, py.unit, px.unit],
  };
}

function layoutName(layout: TiffPlaneLayout): string {
  return layout.source === 'imagej' ? 'an ImageJ hyperstack' : layout.source === 'ome' ? 'an OME-TIFF' : 'a TIFF stack';
}

function sizesText({ c, z, t }: TiffPlaneSizes): string {
  return `${c} channel${c === 1 ? '' : 's'} x ${z} slice${z === 1 ? '' : 's'} x ${t} time point${t === 1 ? '' : 's'}`;
}

/**
 * The pages (IFD indices) of slices z = 0..Z-1 at the chosen channel and time point. A channel or
 * time axis of more than one entry must be chosen; 0 is accepted where there is none, as for OME-Zarr.
 */
export function tiffStackPages(file: string, layout: TiffPlaneLayout, choice: TiffPlaneChoice = {}): number[] {
  const { sizes } = layout;
  const missing: string[] = [];
  if (sizes.c > 1 && choice.channel === undefined) missing.push(`a channel with --channel (0 to ${sizes.c - 1})`);
  if (sizes.t > 1 && choice.time === undefined) missing.push(`a time point with --time (0 to ${sizes.t - 1})`);
  if (missing.length) throw new InputError(file, `is ${layoutName(layout)} of ${sizesText(sizes)}; choose ${missing.join(' and ')}`);
  for (const [name, value, n, axis] of [['channel', choice.channel, sizes.c, 'c'], ['time point', choice.time, sizes.t, 't']] as const) {
    if (value === undefined || value === 0) continue;
    if (n === 1) throw new InputError(file, `has no ${name === 'channel' ? 'channel' : 'time'} axis (${layoutName(layout)} of ${sizesText(sizes)}), so ${name} ${value} does not exist`);
    if (!Number.isInteger(value) || value < 0 || value >= n) throw new InputError(file, `has no ${name} ${value} (axis ${axis} has ${n})`);
  }
  const c = choice.channel ?? 0;
  const t = choice.time ?? 0;
  return Array.from({ length: sizes.z }, (_, z) => {
    const page = layout.pageOf(c, z, t);
    if (page < 0) throw new InputError(file, `has ${layoutName(layout)} metadata that maps no page to channel ${c}, slice ${z}, time point ${t}`);
    return page;
  });
}
