/**
 * Well-formed inputs (every format) and a tiny model for the adversarial battery, and the ways it
 * breaks them: truncation, lying headers, corrupt bytes, absurd Zarr metadata.
 */
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import Zstd from 'numcodecs/zstd';
import { Rng } from '../../core/rng.js';
import { defaultUNetConfig } from '../../models/unet.js';
import { writeImage } from '../../storage/index.js';
import { FileSystemStore } from '../../storage/fsStore.js';
import { createZarrArray, type ZarrArraySpec } from '../../storage/zarr.js';
import { createOmeZarr } from '../../storage/ome.js';
import { saveUntrainedModel } from '../fixtures/untrainedModel.js';

export const SIDE = 32;

export interface Fixtures {
  root: string;
  model: string;
  /** A 3D model (frame folders and TIFF stacks are ZYX). */
  model3d: string;
  /** Good image files by format. */
  png: string;
  tif: string;
  fits: string;
  npy: string;
  stack: string;
  frames: string;
  zarr2: string;
  zarr3: string;
  ome04: string;
  ome05: string;
}

function noisy(n: number, seed: number): Float32Array {
  const rng = new Rng(seed);
  return Float32Array.from({ length: n }, () => Math.max(0, Math.min(255, Math.round(100 + 20 * rng.normal()))));
}

/** A Zarr array at `dir` (v2 or v3), its chunks written by our writer. */
export async function writeZarr(dir: string, spec: Partial<ZarrArraySpec> & { zarrVersion: 2 | 3 }): Promise<void> {
  const full: ZarrArraySpec = { shape: [SIDE, SIDE], chunks: [16, 16], dtype: 'uint8', codec: 'zstd', ...spec };
  const writer = await createZarrArray(new FileSystemStore(dir), '/', full);
  const grid = full.shape.map((s, a) => Math.ceil(s / full.chunks[a]));
  const per = full.chunks.reduce((a, b) => a * b, 1);
  for (let y = 0; y < grid[0]; y++) for (let x = 0; x < grid[1]; x++) await writer.writeChunk([y, x], noisy(per, 7 + y * 3 + x));
}

export async function writeOme(dir: string, version: '0.4' | '0.5'): Promise<void> {
  const writer = await createOmeZarr(dir, {
    shape: [SIDE, SIDE],
    chunks: [16, 16],
    dtype: 'uint8',
    axes: [{ name: 'y', type: 'space' }, { name: 'x', type: 'space' }],
    placement: { scale: [0.5, 0.5], translation: [0, 0] },
    ngffVersion: version,
  });
  for (let y = 0; y < 2; y++) for (let x = 0; x < 2; x++) await writer.writeChunk([y, x], noisy(256, 3 + y + x));
  await writer.buildPyramid();
}

export async function makeFixtures(root: string): Promise<Fixtures> {
  await tf.setBackend('cpu');
  const good = path.join(root, 'good');
  await fs.mkdir(good, { recursive: true });
  const image = (sampleType: 'uint8' | 'uint16' | 'float32') => ({ data: noisy(SIDE * SIDE, 1), shape: [SIDE, SIDE] as [number, number], sampleType });
  const f: Fixtures = {
    root,
    model: path.join(root, 'model'),
    model3d: path.join(root, 'model3d'),
    png: path.join(good, 'img.png'),
    tif: path.join(good, 'img.tif'),
    fits: path.join(good, 'img.fits'),
    npy: path.join(good, 'img.npy'),
    stack: path.join(good, 'stack.tif'),
    frames: path.join(good, 'frames'),
    zarr2: path.join(good, 'v2.zarr'),
    zarr3: path.join(good, 'v3.zarr'),
    ome04: path.join(good, 'ome04.zarr'),
    ome05: path.join(good, 'ome05.zarr'),
  };
  await saveUntrainedModel(f.model, { ...defaultUNetConfig(2), depth: 1, filters: 4 }, { mode: 'meanstd', offset: 100, scale: 20 }, 1);
  await saveUntrainedModel(f.model3d, { ...defaultUNetConfig(3), depth: 1, filters: 4 }, { mode: 'meanstd', offset: 100, scale: 20 }, 1);
  await writeImage(f.png, image('uint8'));
  await writeImage(f.tif, image('uint16'));
  await writeImage(f.fits, image('float32'));
  await writeImage(f.npy, image('float32'));
  await writeImage(f.stack, { data: noisy(3 * SIDE * SIDE, 2), shape: [3, SIDE, SIDE], sampleType: 'uint8' });
  await fs.mkdir(f.frames);
  for (let z = 0; z < 3; z++) await writeImage(path.join(f.frames, `f${z}.png`), { data: noisy(SIDE * SIDE, 10 + z), shape: [SIDE, SIDE], sampleType: 'uint8' });
  await writeZarr(f.zarr2, { zarrVersion: 2 });
  await writeZarr(f.zarr3, { zarrVersion: 3 });
  await writeOme(f.ome04, '0.4');
  await writeOme(f.ome05, '0.5');
  return f;
}

// ---------------------------------------------------------------------------------------------
// Breaking files

export function truncate(bytes: Uint8Array, fraction: number): Uint8Array {
  return bytes.subarray(0, Math.floor(bytes.length * fraction));
}

export function garbage(n: number, seed: number, start: number[] = []): Uint8Array {
  const rng = new Rng(seed);
  const out = Uint8Array.from({ length: n }, () => rng.int(256));
  out.set(start);
  return out;
}

/** PNG chunks, to rewrite one and fix its CRC. */
function pngChunks(bytes: Uint8Array): Array<{ type: string; data: Uint8Array }> {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const chunks: Array<{ type: string; data: Uint8Array }> = [];
  for (let pos = 8; pos + 12 <= bytes.length; ) {
    const length = view.getUint32(pos);
    chunks.push({ type: Buffer.from(bytes.subarray(pos + 4, pos + 8)).toString('latin1'), data: bytes.slice(pos + 8, pos + 8 + length) });
    pos += 12 + length;
  }
  return chunks;
}

function pngFrom(chunks: Array<{ type: string; data: Uint8Array }>): Uint8Array {
  const parts: Buffer[] = [Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])];
  for (const { type, data } of chunks) {
    const head = Buffer.alloc(8);
    head.writeUInt32BE(data.length, 0);
    head.write(type, 4, 'latin1');
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(zlib.crc32(Buffer.concat([Buffer.from(type, 'latin1'), data])) >>> 0, 0);
    parts.push(head, Buffer.from(data), crc);
  }
  return Buffer.concat(parts);
}

/** A valid PNG (CRCs right) whose IHDR says width x height. */
export function pngWithSize(bytes: Uint8Array, width: number, height: number): Uint8Array {
  const chunks = pngChunks(bytes);
  const ihdr = chunks.find((c) => c.type === 'IHDR')!;
  const view = new DataView(ihdr.data.buffer, ihdr.data.byteOffset);
  view.setUint32(0, width);
  view.setUint32(4, height);
  return pngFrom(chunks);
}

/** A PNG whose IDAT is replaced by `idat` (CRCs right). */
export function pngWithIdat(bytes: Uint8Array, idat: Uint8Array): Uint8Array {
  return pngFrom(pngChunks(bytes).map((c) => (c.type === 'IDAT' ? { type: 'IDAT', data: idat } : c)));
}

/** A classic little-endian TIFF with the first IFD's tag `code` value set to `value` (SHORT or LONG, inline). */
export function tiffWithTag(bytes: Uint8Array, code: number, value: number): Uint8Array {
  const out = bytes.slice();
  const view = new DataView(out.buffer);
  const ifd = view.getUint32(4, true);
  const count = view.getUint16(ifd, true);
  for (let i = 0; i < count; i++) {
    const entry = ifd + 2 + i * 12;
    if (view.getUint16(entry, true) !== code) continue;
    if (view.getUint16(entry + 2, true) === 3) view.setUint16(entry + 8, value, true);
    else view.setUint32(entry + 8, value, true);
    return out;
  }
  throw new Error(`tag ${code} not found`);
}

/** FITS bytes with the header card `keyword` replaced by `value` (right-aligned in columns 11-30). */
export function fitsWithCard(bytes: Uint8Array, keyword: string, value: string): Uint8Array {
  const out = bytes.slice();
  for (let pos = 0; pos + 80 <= out.length; pos += 80) {
    const card = Buffer.from(out.subarray(pos, pos + 80)).toString('latin1');
    if (card.slice(0, 8).trimEnd() === keyword) {
      const text = `${keyword.padEnd(8)}= ${value.padStart(20)}`.padEnd(80);
      out.set(Buffer.from(text, 'latin1'), pos);
      return out;
    }
    if (card.startsWith('END ')) break;
  }
  throw new Error(`card ${keyword} not found`);
}

/** FITS bytes whose END card is blanked (a header that never ends). */
export function fitsWithoutEnd(bytes: Uint8Array): Uint8Array {
  const out = bytes.slice();
  for (let pos = 0; pos + 80 <= out.length; pos += 80) {
    if (Buffer.from(out.subarray(pos, pos + 3)).toString('latin1') === 'END') {
      out.fill(0x20, pos, pos + 80);
      return out.subarray(0, 2880);
    }
  }
  throw new Error('no END');
}

/** A .npy with the given header dictionary and data bytes. */
export function npyWith(header: string, data: Uint8Array): Uint8Array {
  let text = header;
  while ((10 + text.length + 1) % 64 !== 0) text += ' ';
  text += '\n';
  const head = Buffer.alloc(10);
  Buffer.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0]).copy(head);
  head.writeUInt16LE(text.length, 8);
  return Buffer.concat([head, Buffer.from(text, 'latin1'), Buffer.from(data)]);
}

/** Rewrites a Zarr metadata document (zarr.json / .zarray) of the store at `dir`. */
export async function editJson(file: string, edit: (doc: Record<string, unknown>) => void): Promise<void> {
  const doc = JSON.parse(await fs.readFile(file, 'utf8')) as Record<string, unknown>;
  edit(doc);
  await fs.writeFile(file, JSON.stringify(doc));
}

export async function zstd(bytes: Uint8Array): Promise<Uint8Array> {
  return Zstd.fromConfig({ id: 'zstd', level: 1 }).encode(bytes);
}

export async function copyTree(from: string, to: string): Promise<void> {
  await fs.cp(from, to, { recursive: true });
}
