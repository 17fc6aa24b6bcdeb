/**
 * In-memory images. Axes are named by position: 2D is [Y, X], 3D is [Z, Y, X], C order,
 * units are pixels/voxels. Batch and channel axes are added only at the model boundary
 * (NHWC / NDHWC for TensorFlow.js).
 */

/** Sample types the readers produce and the writers accept. */
export type SampleType = 'uint8' | 'uint16' | 'int16' | 'int32' | 'float32' | 'float64';

export type Shape2D = readonly [y: number, x: number];
export type Shape3D = readonly [z: number, y: number, x: number];
export type Shape = Shape2D | Shape3D;

/** A 2D image or 3D stack with values held as float32 (exact for 8/16-bit data). */
export interface Volume {
  readonly data: Float32Array;
  readonly shape: Shape;
  /** The sample type the values were stored as; writers clip and round to it on request. */
  readonly sampleType: SampleType;
  /** What the file said besides its samples, kept so that an output written in the same format carries it. */
  readonly metadata?: ImageMetadata;
}

/** Metadata a reader found and a writer of the same format puts back (storage/index.ts). */
export interface ImageMetadata {
  /** FITS: every header card (80 characters) but the structural ones (SIMPLE, BITPIX, NAXISn, BZERO, BSCALE...). */
  readonly fitsCards?: readonly string[];
  /** TIFF: resolution tags (RATIONAL as [numerator, denominator]) and the ImageDescription (ImageJ or OME-XML). */
  readonly tiff?: {
    readonly xResolution?: readonly [number, number];
    readonly yResolution?: readonly [number, number];
    readonly resolutionUnit?: number;
    readonly description?: string;
  };
}

export function voxelCount(shape: readonly number[]): number {
  let n = 1;
  for (const s of shape) n *= s;
  return n;
}

export function is3D(shape: Shape): shape is Shape3D {
  return shape.length === 3;
}

/** Inclusive-exclusive value range of an integer sample type (float types: infinite). */
export function sampleTypeRange(t: SampleType): [min: number, max: number] {
  switch (t) {
    case 'uint8':
      return [0, 255];
    case 'uint16':
      return [0, 65535];
    case 'int16':
      return [-32768, 32767];
    case 'int32':
      return [-2147483648, 2147483647];
    default:
      return [-Infinity, Infinity];
  }
}

/**
 * Index into [0, n) of position i of an axis extended by reflection about its first and last sample
 * (numpy 'reflect', "reflect-101": -1 -> 1, n -> n - 2), repeated as often as needed; n = 1: always 0.
 */
export function reflectIndex(i: number, n: number): number {
  if (n === 1) return 0;
  const period = 2 * (n - 1);
  const j = ((i % period) + period) % period;
  return j < n ? j : period - j;
}
