/**
 * PNG codec written against the PNG spec (ISO/IEC 15948) rather than through sharp: sharp
 * converts to sRGB by default (applying ICC/gamma and widening grey to RGB), which changes the
 * stored counts. Here the samples come back exactly as stored: 1/2/4/8/16-bit grey, palette,
 * RGB and alpha variants (grey-as-colour collapses to one channel), Adam7 interlace, CRCs checked.
 * The writer makes 8- or 16-bit greyscale, non-interlaced, with per-row adaptive filtering.
 */
import zlib from 'node:zlib';
import { InputError, OutputError } from '../core/errors.js';
import type { SampleType, Shape2D } from '../core/volume.js';
import { checkImageSize, collapseChannels, type SampleArray } from './common.js';

export const pngSignature = Uint8Array.of(0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a);

export interface DecodedPng {
  samples: Uint8Array | Uint16Array;
  shape: Shape2D;
  sampleType: 'uint8' | 'uint16';
}

const crcTable = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

function crc32(bytes: Uint8Array, start = 0, end = bytes.length): number {
  let c = 0xffffffff;
  for (let i = start; i < end; i++) c = crcTable[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

const channelsOfColourType: Record<number, number> = { 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 };
const allowedDepths: Record<number, number[]> = { 0: [1, 2, 4, 8, 16], 2: [8, 16], 3: [1, 2, 4, 8], 4: [8, 16], 6: [8, 16] };

/** Adam7 passes: [xStart, yStart, xStep, yStep]. */
const adam7 = [
  [0, 0, 8, 8],
  [4, 0, 8, 8],
  [0, 4, 4, 8],
  [2, 0, 4, 4],
  [0, 2, 2, 4],
  [1, 0, 2, 2],
  [0, 1, 1, 2],
] as const;

export function decodePng(file: string, bytes: Uint8Array): DecodedPng {
  const bad = (problem: string): InputError => new InputError(file, `is not a readable PNG: ${problem}`);
  for (let i = 0; i < 8; i++) if (bytes[i] !== pngSignature[i]) throw bad('missing PNG signature');
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let pos = 8;
  let width = 0;
  let height = 0;
  let bitDepth = 0;
  let colourType = -1;
  let interlace = 0;
  let palette: Uint8Array | null = null;
  let paletteAlpha: Uint8Array | null = null;
  const idat: Uint8Array[] = [];
  let sawEnd = false;
  while (pos + 12 <= bytes.length) {
    const length = view.getUint32(pos);
    const type = String.fromCharCode(bytes[pos + 4], bytes[pos + 5], bytes[pos + 6], bytes[pos + 7]);
    const dataStart = pos + 8;
    const dataEnd = dataStart + length;
    if (dataEnd + 4 > bytes.length) throw bad(`file is truncated inside the ${type} chunk (${bytes.length} bytes)`);
    if (crc32(bytes, pos + 4, dataEnd) !== view.getUint32(dataEnd)) throw bad(`CRC mismatch in the ${type} chunk (corrupt file)`);
    const data = bytes.subarray(dataStart, dataEnd);
    if (type === 'IHDR') {
      if (length !== 13) throw bad('IHDR has the wrong length');
      width = view.getUint32(dataStart);
      height = view.getUint32(dataStart + 4);
      bitDepth = data[8];
      colourType = data[9];
      interlace = data[12];
      if (!(colourType in channelsOfColourType) || !allowedDepths[colourType].includes(bitDepth)) {
        throw bad(`invalid colour type ${colourType} with bit depth ${bitDepth}`);
      }
      if (data[10] !== 0 || data[11] !== 0 || interlace > 1) throw bad('unknown compression, filter or interlace method');
      if (width === 0 || height === 0) throw bad('zero width or height');
    } else if (type === 'PLTE') {
      palette = data;
    } else if (type === 'tRNS') {
      if (colourType === 3) paletteAlpha = data;
      // Colour-key transparency on grey/RGB marks one value transparent; the samples are still data.
    } else if (type === 'IDAT') {
      idat.push(data);
    } else if (type === 'IEND') {
      sawEnd = true;
      break;
    }
    pos = dataEnd + 4;
  }
  if (colourType < 0) throw bad('no IHDR chunk');
  if (!sawEnd) throw bad('no IEND chunk: the file is truncated');
  if (idat.length === 0) throw bad('no image data (IDAT)');
  if (colourType === 3 && !palette) throw bad('palette image without a PLTE chunk');

  const channels = channelsOfColourType[colourType];
  const bitsPerPixel = channels * bitDepth;
  // Checked before anything is allocated: a header claiming 100000x100000 is a lie or too large.
  checkImageSize(file, [height, width, channels], 'PNG image');
  // The filtered rows of every pass: what the data must inflate to, at most.
  let expectedRaw = 0;
  for (const [x0, y0, dx, dy] of interlace ? adam7 : ([[0, 0, 1, 1]] as const)) {
    const w = Math.ceil((width - x0) / dx);
    const h = Math.ceil((height - y0) / dy);
    if (w > 0 && h > 0) expectedRaw += h * (1 + Math.ceil((w * bitsPerPixel) / 8));
  }
  let raw: Buffer;
  try {
    raw = zlib.inflateSync(Buffer.concat(idat), { maxOutputLength: Math.max(1, expectedRaw) });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ERR_BUFFER_TOO_LARGE') throw bad(`image data inflates to more than its ${width}x${height} header allows (corrupt)`);
    throw bad(`compressed image data is corrupt (${(err as Error).message})`);
  }
  if (raw.length < expectedRaw) throw bad(`image data is ${raw.length} bytes, its ${width}x${height} header needs ${expectedRaw} (truncated or corrupt)`);

  const filterStride = Math.max(1, bitsPerPixel >> 3);
  const pixelCount = width * height;
  const interleaved: Uint8Array | Uint16Array = bitDepth === 16 ? new Uint16Array(pixelCount * channels) : new Uint8Array(pixelCount * channels);

  let offset = 0;
  const passes = interlace ? adam7 : ([[0, 0, 1, 1]] as const);
  for (const [x0, y0, dx, dy] of passes) {
    const passWidth = Math.ceil((width - x0) / dx);
    const passHeight = Math.ceil((height - y0) / dy);
    if (passWidth <= 0 || passHeight <= 0) continue;
    const rowBytes = Math.ceil((passWidth * bitsPerPixel) / 8);
    let previous = new Uint8Array(rowBytes);
    let current = new Uint8Array(rowBytes);
    for (let py = 0; py < passHeight; py++) {
      if (offset + 1 + rowBytes > raw.length) throw bad('image data is shorter than the header says (truncated or corrupt)');
      const filter = raw[offset];
      unfilterRow(filter, raw.subarray(offset + 1, offset + 1 + rowBytes), previous, current, filterStride, bad);
      offset += 1 + rowBytes;
      const y = y0 + py * dy;
      for (let px = 0; px < passWidth; px++) {
        const x = x0 + px * dx;
        const target = (y * width + x) * channels;
        for (let c = 0; c < channels; c++) interleaved[target + c] = readSample(current, px * channels + c, bitDepth);
      }
      [previous, current] = [current, previous];
    }
  }

  let grey: Uint8Array | Uint16Array;
  if (colourType === 3) {
    const plte = palette as Uint8Array;
    const entries = plte.length / 3;
    const rgba = new Uint8Array(pixelCount * 4);
    for (let p = 0; p < pixelCount; p++) {
      const index = interleaved[p];
      if (index >= entries) throw bad(`palette index ${index} out of range at pixel ${p}`);
      rgba[p * 4] = plte[index * 3];
      rgba[p * 4 + 1] = plte[index * 3 + 1];
      rgba[p * 4 + 2] = plte[index * 3 + 2];
      rgba[p * 4 + 3] = paletteAlpha && index < paletteAlpha.length ? paletteAlpha[index] : 255;
    }
    grey = collapseChannels(file, rgba, pixelCount, 4, width, { alphaLast: true, opaque: 255 });
  } else {
    const hasAlpha = colourType === 4 || colourType === 6;
    grey = collapseChannels(file, interleaved, pixelCount, channels, width, { alphaLast: hasAlpha, opaque: bitDepth === 16 ? 65535 : 255 });
  }
  return { samples: grey, shape: [height, width], sampleType: bitDepth === 16 ? 'uint16' : 'uint8' };
}

function readSample(row: Uint8Array, index: number, bitDepth: number): number {
  switch (bitDepth) {
    case 16:
      return (row[index * 2] << 8) | row[index * 2 + 1];
    case 8:
      return row[index];
    default: {
      const bit = index * bitDepth;
      const shift = 8 - bitDepth - (bit & 7);
      return (row[bit >> 3] >> shift) & ((1 << bitDepth) - 1);
    }
  }
}

function unfilterRow(
  filter: number,
  filtered: Uint8Array,
  previous: Uint8Array,
  out: Uint8Array,
  stride: number,
  bad: (problem: string) => InputError,
): void {
  const n = filtered.length;
  switch (filter) {
    case 0:
      out.set(filtered);
      break;
    case 1:
      for (let i = 0; i < n; i++) out[i] = (filtered[i] + (i >= stride ? out[i - stride] : 0)) & 0xff;
      break;
    case 2:
      for (let i = 0; i < n; i++) out[i] = (filtered[i] + previous[i]) & 0xff;
      break;
    case 3:
      for (let i = 0; i < n; i++) out[i] = (filtered[i] + (((i >= stride ? out[i - stride] : 0) + previous[i]) >> 1)) & 0xff;
      break;
    case 4:
      for (let i = 0; i < n; i++) {
        const a = i >= stride ? out[i - stride] : 0;
        const c = i >= stride ? previous[i - stride] : 0;
        out[i] = (filtered[i] + paeth(a, previous[i], c)) & 0xff;
      }
      break;
    default:
      throw bad(`unknown row filter type ${filter} (corrupt data)`);
  }
}

function paeth(a: number, b: number, c: number): number {
  const p = a + b - c;
  const pa = Math.abs(p - a);
  const pb = Math.abs(p - b);
  const pc = Math.abs(p - c);
  return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
}

function chunk(type: string, data: Uint8Array): Uint8Array {
  const out = new Uint8Array(12 + data.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, data.length);
  for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
  out.set(data, 8);
  view.setUint32(8 + data.length, crc32(out, 4, 8 + data.length));
  return out;
}

/** Encodes 8- or 16-bit greyscale samples [Y, X]. */
export function encodePng(file: string, samples: SampleArray, shape: Shape2D, sampleType: SampleType): Uint8Array[] {
  if (sampleType !== 'uint8' && sampleType !== 'uint16') {
    throw new OutputError(
      file,
      `PNG can store only uint8 or uint16 greyscale, not ${sampleType}; write .tif (float32) or .npy (any type) instead, or choose uint8/uint16`,
    );
  }
  const [height, width] = shape;
  const bytesPer = sampleType === 'uint16' ? 2 : 1;
  const rowBytes = width * bytesPer;
  const rows = Buffer.alloc(height * (rowBytes + 1));
  let previous = new Uint8Array(rowBytes);
  let current = new Uint8Array(rowBytes);
  const candidate = new Uint8Array(rowBytes);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const v = samples[y * width + x];
      if (bytesPer === 2) {
        current[2 * x] = v >> 8;
        current[2 * x + 1] = v & 0xff;
      } else current[x] = v;
    }
    // libpng's heuristic: the filter whose output has the smallest sum of |signed bytes|.
    let bestFilter = 0;
    let bestCost = Infinity;
    for (let filter = 0; filter <= 4; filter++) {
      const cost = filterRow(filter, current, previous, candidate, bytesPer);
      if (cost < bestCost) {
        bestCost = cost;
        bestFilter = filter;
      }
    }
    const target = y * (rowBytes + 1);
    rows[target] = bestFilter;
    filterRow(bestFilter, current, previous, rows.subarray(target + 1, target + 1 + rowBytes), bytesPer);
    [previous, current] = [current, previous];
  }
  const header = new Uint8Array(13);
  const hv = new DataView(header.buffer);
  hv.setUint32(0, width);
  hv.setUint32(4, height);
  header[8] = bytesPer * 8;
  header[9] = 0; // greyscale
  return [pngSignature, chunk('IHDR', header), chunk('IDAT', zlib.deflateSync(rows, { level: 6 })), chunk('IEND', new Uint8Array(0))];
}

function filterRow(filter: number, row: Uint8Array, previous: Uint8Array, out: Uint8Array, stride: number): number {
  let cost = 0;
  for (let i = 0; i < row.length; i++) {
    const a = i >= stride ? row[i - stride] : 0;
    const b = previous[i];
    const c = i >= stride ? previous[i - stride] : 0;
    const predictor = filter === 0 ? 0 : filter === 1 ? a : filter === 2 ? b : filter === 3 ? (a + b) >> 1 : paeth(a, b, c);
    const v = (row[i] - predictor) & 0xff;
    out[i] = v;
    cost += v < 128 ? v : 256 - v;
  }
  return cost;
}
