/**
 * NumPy .npy (format versions 1, 2, 3): 2D or 3D arrays in C order.
 * Reads u1/u2/i1/i2/i4/f4/f8 in either byte order (i1 widens to int16); writes little-endian.
 */
import { InputError } from '../core/errors.js';
import type { SampleType, Shape } from '../core/volume.js';
import { assertFinite, bytesPerSample, dataViewOf, type SampleArray } from './common.js';
import { littleEndianBytes } from './tiff.js';

export const npyMagic = Uint8Array.of(0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59); // \x93NUMPY

export interface DecodedNpy {
  data: Float32Array;
  shape: Shape;
  sampleType: SampleType;
}

const dtypes: Record<string, { sampleType: SampleType; size: number; read: (v: DataView, at: number, le: boolean) => number }> = {
  u1: { sampleType: 'uint8', size: 1, read: (v, at) => v.getUint8(at) },
  i1: { sampleType: 'int16', size: 1, read: (v, at) => v.getInt8(at) },
  u2: { sampleType: 'uint16', size: 2, read: (v, at, le) => v.getUint16(at, le) },
  i2: { sampleType: 'int16', size: 2, read: (v, at, le) => v.getInt16(at, le) },
  i4: { sampleType: 'int32', size: 4, read: (v, at, le) => v.getInt32(at, le) },
  f4: { sampleType: 'float32', size: 4, read: (v, at, le) => v.getFloat32(at, le) },
  f8: { sampleType: 'float64', size: 8, read: (v, at, le) => v.getFloat64(at, le) },
};

export function decodeNpy(file: string, bytes: Uint8Array): DecodedNpy {
  for (let i = 0; i < npyMagic.length; i++) {
    if (bytes[i] !== npyMagic[i]) throw new InputError(file, 'is not a .npy file: missing the \\x93NUMPY magic');
  }
  const view = dataViewOf(bytes);
  const major = bytes[6];
  if (bytes.length < 10 || major < 1 || major > 3) throw new InputError(file, `has unknown .npy format version ${major}`);
  const headerLength = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const headerStart = major === 1 ? 10 : 12;
  const dataStart = headerStart + headerLength;
  if (dataStart > bytes.length) throw new InputError(file, 'is truncated inside the .npy header');
  const header = new TextDecoder(major === 3 ? 'utf-8' : 'latin1').decode(bytes.subarray(headerStart, dataStart));

  const descr = /'descr'\s*:\s*'([^']*)'/.exec(header)?.[1];
  const fortran = /'fortran_order'\s*:\s*(True|False)/.exec(header)?.[1];
  const shapeText = /'shape'\s*:\s*\(([^)]*)\)/.exec(header)?.[1];
  if (descr === undefined || fortran === undefined || shapeText === undefined) {
    throw new InputError(file, `has a malformed .npy header: ${JSON.stringify(header.trim())}`);
  }
  if (fortran === 'True') {
    throw new InputError(file, 'is stored in Fortran (column-major) order; save it in C order (np.save(f, np.ascontiguousarray(a)))');
  }
  const byteOrder = descr[0];
  const dtype = dtypes[descr.slice(1)];
  if (!dtype || !'<>|='.includes(byteOrder) || (byteOrder === '|' && dtype.size !== 1)) {
    throw new InputError(file, `has unsupported dtype '${descr}'; supported are uint8, int8, uint16, int16, int32, float32, float64`);
  }
  const littleEndian = byteOrder !== '>';
  const dims = shapeText
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '')
    .map(Number);
  if (dims.some((d) => !Number.isInteger(d) || d < 0)) throw new InputError(file, `has an invalid shape (${shapeText})`);
  if (dims.length !== 2 && dims.length !== 3) {
    throw new InputError(file, `has ${dims.length} dimensions (shape (${dims.join(', ')})); only 2D [Y, X] and 3D [Z, Y, X] arrays are supported`);
  }
  if (dims.some((d) => d === 0)) throw new InputError(file, `is empty (shape (${dims.join(', ')}))`);
  const shape = dims as unknown as Shape;
  const count = dims.reduce((a, b) => a * b, 1);
  const expected = count * dtype.size;
  if (bytes.length - dataStart < expected) {
    throw new InputError(file, `is truncated: shape (${dims.join(', ')}) needs ${expected} data bytes but only ${bytes.length - dataStart} follow`);
  }
  const dataView = dataViewOf(bytes.subarray(dataStart, dataStart + expected));
  const data = new Float32Array(count);
  const wide = dtype.sampleType === 'float64' ? new Float64Array(count) : null;
  for (let i = 0; i < count; i++) {
    const v = dtype.read(dataView, i * dtype.size, littleEndian);
    data[i] = v;
    if (wide) wide[i] = v;
  }
  if (wide) assertFinite(file, wide, shape);
  assertFinite(file, data, shape, wide ? 'the data, converted to float32,' : 'the data');
  return { data, shape, sampleType: dtype.sampleType };
}

const descrOf: Record<SampleType, string> = { uint8: '|u1', uint16: '<u2', int16: '<i2', int32: '<i4', float32: '<f4', float64: '<f8' };

export function encodeNpy(samples: SampleArray, shape: Shape, sampleType: SampleType): Uint8Array[] {
  const dict = `{'descr': '${descrOf[sampleType]}', 'fortran_order': False, 'shape': (${shape.join(', ')}), }`;
  // Version 1.0; NumPy pads the header with spaces to a multiple of 64 bytes (ending in '\n') so the data is aligned.
  const prefix = 10;
  const head = new Uint8Array(Math.ceil((prefix + dict.length + 1) / 64) * 64);
  head.set(npyMagic);
  head[6] = 1;
  head[7] = 0;
  new DataView(head.buffer).setUint16(8, head.length - prefix, true);
  head.fill(0x20, prefix);
  for (let i = 0; i < dict.length; i++) head[prefix + i] = dict.charCodeAt(i);
  head[head.length - 1] = 0x0a;
  if (samples.length * bytesPerSample[sampleType] !== samples.byteLength) throw new Error('sample array does not match its type');
  return [head, littleEndianBytes(samples, sampleType)];
}
