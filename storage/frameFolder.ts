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
import { fromFile } from 'geotiff';
import { isSupportedImage, readImage } from './index.js';
import { formatOf } from './formats.js';

/**
 * A frame's [height, width] from its header alone (PNG IHDR, TIFF first page, FITS NAXIS cards, npy
 * shape), or null when the header cannot say (gzip FITS, an unreadable header: its read will tell).
 * Lets a folder be checked whole before anything is written.
 */
async function frameHeaderShape(file: string): Promise<[number, number] | null> {
  const format = formatOf(file);
  if (format === 'tiff') {
    try {
      const tiff = await fromFile(file);
      try {
        const page = await tiff.getImage(0);
        return [page.getHeight(), page.getWidth()];
      } finally {
        (tiff as unknown as { close?: () => void }).close?.();
      }
    } catch {
      return null;
    }
  }
  let head: Buffer;
  const handle = await fs.open(file, 'r');
  try {
    head = Buffer.alloc(8640);
    const { bytesRead } = await handle.read(head, 0, head.length, 0);
    head = head.subarray(0, bytesRead);
  } finally {
    await handle.close();
  }
  if (format === 'png' && head.length >= 24) return [head.readUInt32BE(20), head.readUInt32BE(16)];
  if (format === 'npy') {
    const shape = /'shape'\s*:\s*\((\d+)\s*,\s*(\d+)\s*,?\s*\)/.exec(head.toString('latin1'));
    return shape ? [Number(shape[1]), Number(shape[2])] : null;
  }
  if (format === 'fits' && !(head[0] === 0x1f && head[1] === 0x8b)) {
    const text = head.toString('latin1');
    const card = (key: string): number | null => {
      for (let pos = 0; pos + 80 <= text.length; pos += 80) {
        if (text.slice(pos, pos + 8).trimEnd() === key) return Number(text.slice(pos + 10, pos + 80).split('/')[0].trim());
        if (text.slice(pos, pos + 8).trimEnd() === 'END') break;
      }
      return null;
    };
    const [x, y, n] = [card('NAXIS1'), card('NAXIS2'), card('NAXIS')];
    return n === 2 && x !== null && y !== null ? [y, x] : null;
  }
  return null;
}

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
  // Every frame's size from its header before anything is written: a frame of another size found
  // half-way through a denoise would otherwise leave a half-written output behind.
  for (let k = 1; k < files.length; k++) {
    const shape = await frameHeaderShape(files[k]).catch(() => null);
    if (shape && (shape[0] !== height || shape[1] !== width)) {
      throw new InputError(files[k], `is ${shape.join('x')} but ${names[0]} is ${height}x${width}; all frames must have the same shape`);
    }
  }
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
