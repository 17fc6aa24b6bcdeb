/**
 * structN2V (Broaddus et al. 2020): for noise correlated along a direction, the blind spot is a
 * structuring element (e.g. a short horizontal line) centred on each masked pixel instead of one
 * pixel. Every pixel of the element gets a value drawn uniformly from the patch's value range, as
 * the reference implementation does for the structure, so the network cannot read the correlated
 * noise through it.
 *
 * Structuring elements come from `--struct-mask`:
 * - `horizontal:N`: a line of N pixels along X (N odd); `vertical:N`: along Y; `depth:N`: along Z (3D);
 * - a file path: the element as a 2D or 3D array of 0/1 values with an odd side on every axis, in
 *   one of these formats (chosen by extension):
 *   - `.json`: nested arrays, [[0,1,0],[1,1,1],[0,1,0]] (2D) or [[[...]]] (3D, outermost Z);
 *   - `.npy`: a NumPy array (bool, int or float dtype, C order), e.g. np.save('m.npy', m);
 *   - anything else, text: one row per line of 0/1 digits (spaces between them optional), 3D
 *     planes separated by blank lines, `#` starts a comment.
 *   The centre value is ignored: the centre is always the masked pixel itself.
 * A 2D element on 3D data acts in each Z plane.
 */
import { readFileSync } from 'node:fs';
import { InputError, UsageError } from '../core/errors.js';
import type { Rng } from '../core/rng.js';
import type { Shape } from '../core/volume.js';
import { voxelCount } from '../core/volume.js';
import { maskPatch, type MaskOptions } from './masking.js';

export interface StructuringElement {
  /** Side per axis, [Y, X] or [Z, Y, X], each odd; the centre is the masked pixel. */
  readonly shape: readonly number[];
  /** 0/1 in C order; the centre is always 1. */
  readonly values: Uint8Array;
}

function validateElement(where: string, shape: readonly number[], values: ArrayLike<number>, fail: (problem: string) => Error): StructuringElement {
  if (shape.length !== 2 && shape.length !== 3) throw fail(`a structuring mask must be 2D or 3D, got ${shape.length} axes`);
  for (const side of shape) if (!Number.isInteger(side) || side < 1 || side % 2 === 0) throw fail(`every side of a structuring mask must be odd (it is centred on the pixel), got shape [${shape.join(', ')}]`);
  if (values.length !== voxelCount(shape)) throw fail(`shape [${shape.join(', ')}] needs ${voxelCount(shape)} values, got ${values.length}`);
  const out = new Uint8Array(values.length);
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (v !== 0 && v !== 1) throw fail(`structuring mask values must be 0 or 1, got ${v} at position ${i} of ${where}`);
    out[i] = v;
  }
  out[(out.length - 1) / 2] = 1;
  return { shape: [...shape], values: out };
}

/** A line of `length` pixels along `axis` of a `dims`-D element. */
export function lineElement(dims: 2 | 3, axis: number, length: number): StructuringElement {
  const shape = new Array<number>(dims).fill(1);
  shape[axis] = length;
  return validateElement('a line', shape, new Uint8Array(length).fill(1), (problem) => new UsageError(`structuring mask: ${problem}`));
}

/**
 * `horizontal:N`, `vertical:N`, `depth:N` (3D only) or a mask file (see the module comment), for
 * data with `dims` spatial axes. A 2D file on 3D data is lifted to one Z plane.
 */
export function parseStructMask(spec: string, dims: 2 | 3, option = '--struct-mask'): StructuringElement {
  const line = /^(horizontal|vertical|depth):(.*)$/.exec(spec);
  let element: StructuringElement;
  if (line !== null) {
    const length = Number(line[2]);
    if (!Number.isInteger(length) || length < 1 || length % 2 === 0) throw new UsageError(`${option} ${line[1]}:N needs an odd length N >= 1 (the line is centred on the pixel), got '${line[2]}'`);
    const axisFromEnd = { horizontal: 1, vertical: 2, depth: 3 }[line[1] as 'horizontal' | 'vertical' | 'depth'];
    if (axisFromEnd > dims) throw new UsageError(`${option} ${line[1]}:N needs 3D data, these images are 2D`);
    element = lineElement(dims, dims - axisFromEnd, length);
  } else {
    element = readStructMaskFile(spec);
  }
  return liftToDims(element, dims, spec);
}

/** A 2D element as [1, Y, X] for 3D data; a 3D element on 2D data only if its Z side is 1. */
export function liftToDims(element: StructuringElement, dims: 2 | 3, where = 'structuring mask'): StructuringElement {
  if (element.shape.length === dims) return element;
  if (element.shape.length === 2) return { shape: [1, ...element.shape], values: element.values };
  if (element.shape[0] !== 1) throw new InputError(where, `a 3D structuring mask (shape [${element.shape.join(', ')}]) cannot be used on 2D images`);
  return { shape: element.shape.slice(1), values: element.values };
}

/** Reads a mask file: .json (nested arrays), .npy, or text rows of 0/1 (see the module comment). */
export function readStructMaskFile(path: string): StructuringElement {
  let bytes: Buffer;
  try {
    bytes = readFileSync(path);
  } catch (err) {
    throw new InputError(path, `cannot read the structuring mask: ${(err as Error).message}`, { cause: err });
  }
  const fail = (problem: string): InputError => new InputError(path, problem);
  const lower = path.toLowerCase();
  if (lower.endsWith('.npy')) {
    const { shape, values } = parseNpy(bytes, fail);
    return validateElement(path, shape, values, fail);
  }
  if (lower.endsWith('.json')) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(bytes.toString('utf8'));
    } catch (err) {
      throw new InputError(path, `not valid JSON: ${(err as Error).message}`, { cause: err });
    }
    const { shape, values } = flattenNested(parsed, fail);
    return validateElement(path, shape, values, fail);
  }
  return parseTextMask(bytes.toString('utf8'), path);
}

function flattenNested(value: unknown, fail: (problem: string) => Error): { shape: number[]; values: number[] } {
  const shape: number[] = [];
  for (let v: unknown = value; Array.isArray(v); v = v[0]) shape.push(v.length);
  const values: number[] = [];
  const walk = (v: unknown, depth: number): void => {
    if (depth === shape.length) {
      if (typeof v === 'boolean') values.push(v ? 1 : 0);
      else if (typeof v === 'number') values.push(v);
      else throw fail(`structuring mask entries must be 0/1 numbers or booleans, got ${JSON.stringify(v)}`);
      return;
    }
    if (!Array.isArray(v) || v.length !== shape[depth]) throw fail(`structuring mask arrays must be rectangular (axis ${depth} should have ${shape[depth]} entries)`);
    for (const item of v) walk(item, depth + 1);
  };
  walk(value, 0);
  return { shape, values };
}

function parseTextMask(text: string, path: string): StructuringElement {
  const fail = (problem: string): InputError => new InputError(path, problem);
  const planes: number[][][] = [[]];
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.replace(/#.*/, '').trim();
    if (line === '') {
      if (planes[planes.length - 1].length > 0) planes.push([]);
      continue;
    }
    const digits = line.replace(/[\s,]+/g, '');
    if (!/^[01]+$/.test(digits)) throw fail(`text structuring masks hold rows of 0/1 digits, got '${raw.trim()}'`);
    planes[planes.length - 1].push(Array.from(digits, Number));
  }
  if (planes[planes.length - 1].length === 0) planes.pop();
  if (planes.length === 0) throw fail('the structuring mask file holds no rows');
  const nested = planes.length === 1 ? planes[0] : planes;
  const { shape, values } = flattenNested(nested, fail);
  return validateElement(path, shape, values, fail);
}

/** The NumPy .npy format (versions 1-3), C order, bool / integer / float dtypes. */
function parseNpy(bytes: Buffer, fail: (problem: string) => Error): { shape: number[]; values: number[] } {
  if (bytes.length < 10 || bytes.readUInt8(0) !== 0x93 || bytes.toString('latin1', 1, 6) !== 'NUMPY') throw fail('not a .npy file (no \\x93NUMPY magic)');
  const major = bytes.readUInt8(6);
  const headerLength = major === 1 ? bytes.readUInt16LE(8) : bytes.readUInt32LE(8);
  const headerStart = major === 1 ? 10 : 12;
  const header = bytes.toString('latin1', headerStart, headerStart + headerLength);
  const descr = /'descr'\s*:\s*'([^']+)'/.exec(header)?.[1];
  const fortran = /'fortran_order'\s*:\s*(True|False)/.exec(header)?.[1];
  const shapeText = /'shape'\s*:\s*\(([^)]*)\)/.exec(header)?.[1];
  if (descr === undefined || fortran === undefined || shapeText === undefined) throw fail(`unreadable .npy header: ${header.trim()}`);
  if (fortran === 'True') throw fail('Fortran-order .npy arrays are not supported; save a C-order array (np.ascontiguousarray)');
  const shape = shapeText
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '')
    .map(Number);
  const kinds: Record<string, [size: number, read: (offset: number) => number]> = {
    '|b1': [1, (o) => bytes.readUInt8(o)],
    '|u1': [1, (o) => bytes.readUInt8(o)],
    '|i1': [1, (o) => bytes.readInt8(o)],
    '<u2': [2, (o) => bytes.readUInt16LE(o)],
    '<i2': [2, (o) => bytes.readInt16LE(o)],
    '<u4': [4, (o) => bytes.readUInt32LE(o)],
    '<i4': [4, (o) => bytes.readInt32LE(o)],
    '<i8': [8, (o) => Number(bytes.readBigInt64LE(o))],
    '<u8': [8, (o) => Number(bytes.readBigUInt64LE(o))],
    '<f4': [4, (o) => bytes.readFloatLE(o)],
    '<f8': [8, (o) => bytes.readDoubleLE(o)],
  };
  const kind = kinds[descr];
  if (kind === undefined) throw fail(`unsupported .npy dtype '${descr}' (use bool, (u)int8-64 or float32/64, little-endian)`);
  const [size, read] = kind;
  const count = voxelCount(shape);
  const dataStart = headerStart + headerLength;
  if (bytes.length < dataStart + count * size) throw fail(`truncated .npy: shape (${shape.join(', ')}) needs ${count * size} data bytes, the file has ${bytes.length - dataStart}`);
  const values = Array.from({ length: count }, (_, i) => read(dataStart + i * size));
  return { shape, values };
}

/** Offsets [dz, dy, dx] (dz = 0 for a 2D element) of the element's pixels other than the centre. */
export function structureOffsets(element: StructuringElement): Int32Array {
  const [sz, sy, sx] = element.shape.length === 3 ? element.shape : [1, element.shape[0], element.shape[1]];
  const centre = (element.values.length - 1) / 2;
  const offsets: number[] = [];
  for (let i = 0; i < element.values.length; i++) {
    if (element.values[i] === 0 || i === centre) continue;
    offsets.push(Math.floor(i / (sy * sx)) - (sz - 1) / 2, (Math.floor(i / sx) % sy) - (sy - 1) / 2, (i % sx) - (sx - 1) / 2);
  }
  return Int32Array.from(offsets);
}

/**
 * structN2V's replacement, in place on `input` (a patch [Y, X] or [Z, Y, X]): around every masked
 * centre (flat index), every pixel of the element, the centre included, that lies inside the patch
 * gets a value uniform in [range[0], range[1]). Returns a 0/1 map of the replaced pixels and their
 * count. The centre is replaced like the rest (not by a copied neighbour, as N2V does): a copied
 * neighbour could be a pixel of the structure, whose noise is correlated with the centre's.
 */
export function applyStructMask(
  input: Float32Array,
  shape: Shape,
  centres: ArrayLike<number>,
  element: StructuringElement,
  range: readonly [min: number, max: number],
  rng: Rng,
): { replaced: Float32Array; count: number } {
  if (input.length !== voxelCount(shape)) throw new RangeError(`applyStructMask: input has ${input.length} values, shape [${shape.join(', ')}] needs ${voxelCount(shape)}`);
  const lifted = liftToDims(element, shape.length as 2 | 3);
  const offsets = Int32Array.from([0, 0, 0, ...structureOffsets(lifted)]);
  const [nz, ny, nx] = shape.length === 3 ? shape : [1, shape[0], shape[1]];
  const replaced = new Float32Array(input.length);
  const [lo, hi] = range;
  let count = 0;
  for (let c = 0; c < centres.length; c++) {
    const centre = centres[c];
    const z = Math.floor(centre / (ny * nx));
    const y = Math.floor(centre / nx) % ny;
    const x = centre % nx;
    for (let o = 0; o < offsets.length; o += 3) {
      const zz = z + offsets[o];
      const yy = y + offsets[o + 1];
      const xx = x + offsets[o + 2];
      // Outside the patch: nothing to hide (n2v clips such pixels onto the border instead, which replaces border pixels twice).
      if (zz < 0 || yy < 0 || xx < 0 || zz >= nz || yy >= ny || xx >= nx) continue;
      const index = (zz * ny + yy) * nx + xx;
      input[index] = lo + (hi - lo) * rng.uniform();
      if (replaced[index] === 0) count++;
      replaced[index] = 1;
    }
  }
  return { replaced, count };
}

/**
 * structN2V masking of one patch: centres placed by N2V's stratified sampling (maskPatch with
 * `opts`; its replacement values are overwritten), then every element pixel around each centre
 * replaced by a uniform value in the patch's [min, max]. The training target is the unmodified
 * patch and the loss runs over `mask` (the centres), as for N2V; `replaced` marks every pixel whose
 * input value was replaced (centres and structure).
 */
export function structMaskPatch(
  patch: Float32Array,
  shape: Shape,
  element: StructuringElement,
  opts: MaskOptions,
  rng: Rng,
): { input: Float32Array; mask: Float32Array; count: number; replaced: Float32Array } {
  const { input, mask, count } = maskPatch(patch, shape, opts, rng);
  let min = Infinity;
  let max = -Infinity;
  for (let i = 0; i < patch.length; i++) {
    if (patch[i] < min) min = patch[i];
    if (patch[i] > max) max = patch[i];
  }
  const centres: number[] = [];
  for (let i = 0; i < mask.length; i++) if (mask[i] === 1) centres.push(i);
  const { replaced } = applyStructMask(input, shape, centres, element, [min, max], rng);
  return { input, mask, count, replaced };
}
