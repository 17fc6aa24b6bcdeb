/**
 * FITS image reader and writer (FITS standard 4.0, primary HDU or first IMAGE extension).
 * Header: 2880-byte blocks of 80-character cards; data: big-endian BITPIX 8/16/32/-32/-64,
 * physical = BZERO + BSCALE * stored. Axes: NAXIS1 is X (fastest), so [NAXIS2, NAXIS1] is [Y, X]
 * and NAXIS3 is Z. Rows stay in stored order (as astropy's `data[y, x]`; FITS viewers draw row 0 at the bottom).
 * Integer pixels equal to BLANK are undefined and are reported like NaN.
 */
import zlib from 'node:zlib';
import { InputError, OutputError } from '../core/errors.js';
import type { SampleType, Shape } from '../core/volume.js';
import { assertFinite, dataViewOf, type SampleArray } from './common.js';

const blockSize = 2880;
const cardSize = 80;

export interface DecodedFits {
  data: Float32Array;
  shape: Shape;
  sampleType: SampleType;
  /** Every header card but the structural ones (FITS_STRUCTURAL), in order: the primary HDU's, then the image extension's. */
  cards: string[];
}

/**
 * Cards that describe the data's layout or encoding, or checksums of it: the writer makes its own.
 * DATAMIN/DATAMAX describe values that denoising changes.
 */
const FITS_STRUCTURAL = /^(SIMPLE|BITPIX|NAXIS\d*|EXTEND|BZERO|BSCALE|BLANK|XTENSION|PCOUNT|GCOUNT|END|CHECKSUM|DATASUM|DATAMIN|DATAMAX)$/;

export function isGzip(bytes: Uint8Array): boolean {
  return bytes.length >= 2 && bytes[0] === 0x1f && bytes[1] === 0x8b;
}

export function looksLikeFits(bytes: Uint8Array): boolean {
  return bytes.length >= 30 && String.fromCharCode(...bytes.subarray(0, 9)) === 'SIMPLE  =';
}

type CardValue = number | boolean | string;

/** Parses one HDU header starting at `start`; returns its cards and where its data begins. */
function parseHeader(file: string, bytes: Uint8Array, start: number): { cards: Map<string, CardValue>; dataStart: number; raw: string[] } {
  const cards = new Map<string, CardValue>();
  const raw: string[] = [];
  for (let pos = start; pos + cardSize <= bytes.length; pos += cardSize) {
    const card = String.fromCharCode(...bytes.subarray(pos, pos + cardSize));
    const keyword = card.slice(0, 8).trimEnd();
    if (keyword === 'END') {
      const headerEnd = pos + cardSize;
      return { cards, dataStart: Math.ceil((headerEnd - start) / blockSize) * blockSize + start, raw };
    }
    if (!FITS_STRUCTURAL.test(keyword) && card.trim() !== '') raw.push(card);
    if (card.slice(8, 10) !== '= ' || cards.has(keyword)) continue;
    const value = parseValue(card.slice(10));
    if (value !== undefined) cards.set(keyword, value);
  }
  throw new InputError(file, 'is not a readable FITS file: the header has no END card (truncated or corrupt)');
}

function parseValue(text: string): CardValue | undefined {
  const trimmed = text.trimStart();
  if (trimmed.startsWith("'")) {
    // Quoted string; '' inside is an escaped quote.
    let out = '';
    for (let i = 1; i < trimmed.length; i++) {
      if (trimmed[i] === "'") {
        if (trimmed[i + 1] === "'") {
          out += "'";
          i++;
        } else return out.trimEnd();
      } else out += trimmed[i];
    }
    return undefined;
  }
  const token = trimmed.split('/')[0].trim();
  if (token === 'T') return true;
  if (token === 'F') return false;
  const number = Number(token.replace(/[dD]/, 'E'));
  return token !== '' && Number.isFinite(number) ? number : undefined;
}

function numberCard(file: string, cards: Map<string, CardValue>, key: string, fallback?: number): number {
  const v = cards.get(key);
  if (typeof v === 'number') return v;
  if (v === undefined && fallback !== undefined) return fallback;
  throw new InputError(file, `is not a readable FITS file: header keyword ${key} is missing or not a number`);
}

export function decodeFits(file: string, fileBytes: Uint8Array): DecodedFits {
  let bytes = fileBytes;
  if (isGzip(bytes)) {
    try {
      bytes = zlib.gunzipSync(bytes);
    } catch (err) {
      throw new InputError(file, `gzip data is corrupt or truncated (${(err as Error).message})`, { cause: err });
    }
  }
  if (!looksLikeFits(bytes)) throw new InputError(file, 'is not a FITS file: it does not begin with "SIMPLE  ="');

  let { cards, dataStart, raw } = parseHeader(file, bytes, 0);
  const kept = [...raw];
  if (cards.get('SIMPLE') !== true) throw new InputError(file, 'is not a standard FITS file (SIMPLE is not T)');
  let naxis = numberCard(file, cards, 'NAXIS');
  if (naxis === 0) {
    // Images are often in the first extension with an empty primary HDU.
    if (dataStart >= bytes.length) throw new InputError(file, 'has no image data (NAXIS = 0 and no extension)');
    ({ cards, dataStart, raw } = parseHeader(file, bytes, dataStart));
    // The primary's cards (telescope, observer...) and the extension's (WCS...), as a reader of both sees them.
    kept.push(...raw);
    const xtension = cards.get('XTENSION');
    if (xtension === 'BINTABLE' && cards.get('ZIMAGE') === true) {
      throw new InputError(file, 'is a tile-compressed FITS image (fpack); decompress it with funpack first');
    }
    if (xtension !== 'IMAGE') throw new InputError(file, `has no image: the primary HDU is empty and the first extension is ${String(xtension)}`);
    naxis = numberCard(file, cards, 'NAXIS');
  }
  const bitpix = numberCard(file, cards, 'BITPIX');
  if (![8, 16, 32, -32, -64].includes(bitpix)) {
    throw new InputError(file, `has unsupported BITPIX ${bitpix}; supported are 8, 16, 32, -32, -64`);
  }
  const axes: number[] = [];
  for (let k = 1; k <= naxis; k++) axes.push(numberCard(file, cards, `NAXIS${k}`));
  // Degenerate trailing axes (e.g. a Stokes or frequency axis of length 1) carry no pixels.
  while (axes.length > 2 && axes[axes.length - 1] === 1) axes.pop();
  if (axes.length !== 2 && axes.length !== 3) {
    throw new InputError(file, `has ${naxis} axes [${axes.join(', ')}] (NAXIS1 first); only 2D images and 3D cubes are supported`);
  }
  if (axes.some((a) => !Number.isInteger(a) || a < 1)) throw new InputError(file, `has invalid axis lengths [${axes.join(', ')}]`);
  const shape = axes.slice().reverse() as unknown as Shape;
  const count = axes.reduce((a, b) => a * b, 1);
  const sampleBytes = Math.abs(bitpix) / 8;
  if (dataStart + count * sampleBytes > bytes.length) {
    throw new InputError(
      file,
      `is truncated: the header promises ${count * sampleBytes} data bytes but only ${Math.max(0, bytes.length - dataStart)} follow`,
    );
  }
  const bscale = numberCard(file, cards, 'BSCALE', 1);
  const bzero = numberCard(file, cards, 'BZERO', 0);
  const blankCard = cards.get('BLANK');
  const blank = bitpix > 0 && typeof blankCard === 'number' ? blankCard : null;
  const view = dataViewOf(bytes.subarray(dataStart, dataStart + count * sampleBytes));
  const read: (i: number) => number =
    bitpix === 8
      ? (i) => view.getUint8(i)
      : bitpix === 16
        ? (i) => view.getInt16(2 * i)
        : bitpix === 32
          ? (i) => view.getInt32(4 * i)
          : bitpix === -32
            ? (i) => view.getFloat32(4 * i)
            : (i) => view.getFloat64(8 * i);

  const scaled = bscale !== 1 || bzero !== 0;
  // Physical values in float64 first, so float64 data beyond float32 range is caught, not turned into Inf silently.
  const physical = bitpix === -64 || blank !== null ? new Float64Array(count) : null;
  const data = new Float32Array(count);
  for (let i = 0; i < count; i++) {
    const stored = read(i);
    const v = blank !== null && stored === blank ? NaN : scaled ? bzero + bscale * stored : stored;
    if (physical) physical[i] = v;
    data[i] = v;
  }
  if (physical) assertFinite(file, physical, shape, blank !== null ? `the data (BLANK = ${blank} pixels count as NaN)` : 'the data');
  assertFinite(file, data, shape, physical ? 'the data, converted to float32,' : 'the data');

  let sampleType: SampleType;
  if (bitpix === 8 && !scaled) sampleType = 'uint8';
  else if (bitpix === 8 && bscale === 1 && bzero === -128) sampleType = 'int16'; // signed bytes, widened
  else if (bitpix === 16 && !scaled) sampleType = 'int16';
  else if (bitpix === 16 && bscale === 1 && bzero === 32768) sampleType = 'uint16';
  else if (bitpix === 32 && !scaled) sampleType = 'int32';
  else if (bitpix === -64 || bitpix === 32) sampleType = 'float64';
  else sampleType = 'float32';
  return { data, shape, sampleType, cards: kept };
}

function card(keyword: string, value: string, comment = ''): string {
  const text = `${keyword.padEnd(8)}= ${value.padStart(20)}${comment ? ` / ${comment}` : ''}`;
  return text.padEnd(cardSize).slice(0, cardSize);
}

/** A HISTORY card (long text split over several cards). */
export function historyCards(text: string): string[] {
  const out: string[] = [];
  const clean = text.replace(/[^\x20-\x7e]/g, ' ');
  for (let i = 0; i < clean.length || i === 0; i += 72) out.push(`HISTORY ${clean.slice(i, i + 72)}`.padEnd(cardSize));
  return out;
}

/**
 * Writes a primary-HDU FITS image; uint16 is stored as BITPIX 16 with BZERO 32768 (the standard convention).
 * `keptCards` (an input's non-structural cards: WCS, instrument, dates...) follow the structural ones,
 * then `history` as HISTORY cards.
 */
export function encodeFits(file: string, samples: SampleArray, shape: Shape, sampleType: SampleType, gzip: boolean, keptCards: readonly string[] = [], history?: string): Uint8Array {
  const bitpix = { uint8: 8, uint16: 16, int16: 16, int32: 32, float32: -32, float64: -64 }[sampleType];
  const axes = shape.slice().reverse();
  const cards = [
    card('SIMPLE', 'T', 'conforms to FITS standard'),
    card('BITPIX', String(bitpix), `stored as ${sampleType}`),
    card('NAXIS', String(axes.length)),
    ...axes.map((a, k) => card(`NAXIS${k + 1}`, String(a))),
  ];
  if (sampleType === 'uint16') cards.push(card('BZERO', '32768', 'unsigned 16-bit data'), card('BSCALE', '1'));
  for (const kept of keptCards) {
    const keyword = kept.slice(0, 8).trimEnd();
    if (!FITS_STRUCTURAL.test(keyword)) cards.push(kept.replace(/[^\x20-\x7e]/g, ' ').padEnd(cardSize).slice(0, cardSize));
  }
  if (history) cards.push(...historyCards(history));
  cards.push('END'.padEnd(cardSize));
  const headerBytes = Math.ceil((cards.length * cardSize) / blockSize) * blockSize;
  const sampleBytes = Math.abs(bitpix) / 8;
  const dataBytes = Math.ceil((samples.length * sampleBytes) / blockSize) * blockSize;
  const out = new Uint8Array(headerBytes + dataBytes);
  out.fill(0x20, 0, headerBytes);
  const headerText = cards.join('');
  for (let i = 0; i < headerText.length; i++) out[i] = headerText.charCodeAt(i);
  const view = new DataView(out.buffer, headerBytes);
  const n = samples.length;
  switch (sampleType) {
    case 'uint8':
      out.set(samples as Uint8Array, headerBytes);
      break;
    case 'uint16':
      for (let i = 0; i < n; i++) view.setInt16(2 * i, samples[i] - 32768);
      break;
    case 'int16':
      for (let i = 0; i < n; i++) view.setInt16(2 * i, samples[i]);
      break;
    case 'int32':
      for (let i = 0; i < n; i++) view.setInt32(4 * i, samples[i]);
      break;
    case 'float32':
      for (let i = 0; i < n; i++) view.setFloat32(4 * i, samples[i]);
      break;
    case 'float64':
      for (let i = 0; i < n; i++) view.setFloat64(8 * i, samples[i]);
      break;
  }
  if (!gzip) return out;
  try {
    return zlib.gzipSync(out, { level: 6 });
  } catch (err) {
    throw new OutputError(file, `gzip compression failed: ${(err as Error).message}`, { cause: err });
  }
}
