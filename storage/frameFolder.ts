/**
 * A folder of 2D frames (PNG, TIFF, FITS, .npy) as one chunked array: frames sorted naturally
 * (frame2 before frame10) become the Z or T axis, one frame per chunk, each file read when its chunk
 * is asked for (the caller's chunk cache bounds memory).
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { InputError } from '../core/errors.js';
import type { SampleType } from '../core/volume.js';
import type { ArrayInfo, ChunkedArrayReader } from './chunked.js';
import { isSupportedImage, readImage } from './index.js';

const natural = new Intl.Collator('en', { numeric: true, sensitivity: 'base' });

export async function openFrameFolder(dir: string, opts: { axis?: 'z' | 't' } = {}): Promise<ChunkedArrayReader> {
  let names: string[];
  try {
    names = (await fs.readdir(dir)).filter((n) => !n.startsWith('.') && isSupportedImage(n)).sort(natural.compare);
  } catch (err) {
    throw new InputError(dir, `cannot be listed: ${(err as Error).message}`, { cause: err });
  }
  if (names.length === 0) throw new InputError(dir, 'has no image frames (PNG, TIFF, FITS, .npy)');
  const files = names.map((n) => path.join(dir, n));
  const first = await readImage(files[0]);
  if (first.shape.length !== 2) throw new InputError(files[0], `is ${first.shape.length}D; a folder of frames holds 2D images`);
  const [height, width] = first.shape;
  const dtype: SampleType = first.sampleType;
  const axis = opts.axis ?? 'z';
  const info: ArrayInfo = {
    url: dir,
    shape: [files.length, height, width],
    chunks: [1, height, width],
    dtype,
    axes: [
      { name: axis, type: axis === 't' ? 'time' : 'space' },
      { name: 'y', type: 'space' },
      { name: 'x', type: 'space' },
    ],
    placement: { scale: [1, 1, 1], translation: [0, 0, 0] },
  };
  return {
    info,
    async readChunk(index) {
      const [k, cy, cx] = index;
      if (!(k >= 0 && k < files.length) || cy !== 0 || cx !== 0) throw new InputError(dir, `chunk [${index.join(', ')}] is outside the ${files.length} frames`);
      const frame = await readImage(files[k]);
      if (frame.shape.length !== 2 || frame.shape[0] !== height || frame.shape[1] !== width) {
        throw new InputError(files[k], `is ${frame.shape.join('x')} but ${names[0]} is ${height}x${width}; all frames must have the same shape`);
      }
      if (frame.sampleType !== dtype) throw new InputError(files[k], `is ${frame.sampleType} but ${names[0]} is ${dtype}; all frames must have the same sample type`);
      return frame.data;
    },
  };
}
