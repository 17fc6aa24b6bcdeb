import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { Rng } from '../core/rng.js';
import type { Volume } from '../core/volume.js';
import { chunkGrid, type ChunkedArrayReader } from '../storage/chunked.js';
import { openFrameFolder } from '../storage/frameFolder.js';
import { readImage, writeImage } from '../storage/index.js';
import { openTiffStack } from '../storage/tiffStack.js';
import { encodeTiledTiff } from './fixtures/tiledTiff.js';

let tmp: string;
beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'blindspot-sources-'));
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

/** Reassembles the whole array from every chunk, dropping edge padding. */
async function assemble(reader: ChunkedArrayReader): Promise<Float32Array> {
  const { shape, chunks } = reader.info;
  const s3 = shape.length === 2 ? [1, ...shape] : [...shape];
  const c3 = chunks.length === 2 ? [1, ...chunks] : [...chunks];
  const grid = chunkGrid(reader.info);
  const g3 = grid.length === 2 ? [1, ...grid] : grid;
  const out = new Float32Array(s3[0] * s3[1] * s3[2]);
  for (let gz = 0; gz < g3[0]; gz++)
    for (let gy = 0; gy < g3[1]; gy++)
      for (let gx = 0; gx < g3[2]; gx++) {
        const index = shape.length === 2 ? [gy, gx] : [gz, gy, gx];
        const chunk = await reader.readChunk(index);
        expect(chunk.length).toBe(c3[0] * c3[1] * c3[2]);
        for (let z = 0; z < c3[0]; z++)
          for (let y = 0; y < c3[1]; y++)
            for (let x = 0; x < c3[2]; x++) {
              const [iz, iy, ix] = [gz * c3[0] + z, gy * c3[1] + y, gx * c3[2] + x];
              const v = chunk[(z * c3[1] + y) * c3[2] + x];
              if (iz < s3[0] && iy < s3[1] && ix < s3[2]) out[(iz * s3[1] + iy) * s3[2] + ix] = v;
              else if (v !== 0) throw new Error(`edge padding at [${iz}, ${iy}, ${ix}] is ${v}, not 0`);
            }
      }
  return out;
}

function randomStack(shape: [number, number, number], seed: number, max = 65535): Uint16Array {
  const rng = new Rng(seed);
  return Uint16Array.from({ length: shape[0] * shape[1] * shape[2] }, () => rng.int(max + 1));
}

describe('TIFF stacks by random access', () => {
  it('stripped multi-page float32: chunks cover whole strips and equal the whole-file read', async () => {
    const rng = new Rng(1);
    const shape = [3, 150, 1500] as const;
    const volume: Volume = { data: Float32Array.from({ length: 3 * 150 * 1500 }, () => rng.normal()), shape, sampleType: 'float32' };
    const file = path.join(tmp, 'strips.tif');
    await writeImage(file, volume);
    const reader = await openTiffStack(file);
    expect(reader.info.shape).toEqual([3, 150, 1500]);
    expect(reader.info.chunks[0]).toBe(1);
    expect(reader.info.chunks[1]).toBeGreaterThanOrEqual(64);
    expect(reader.info.chunks[1]).toBeLessThan(150);
    expect(reader.info.dtype).toBe('float32');
    expect(await assemble(reader)).toEqual((await readImage(file)).data);
    await reader.close?.();
  });

  for (const bigtiff of [false, true]) {
    it(`tiled ${bigtiff ? 'BigTIFF' : 'classic TIFF'} uint16, sizes not multiples of the tile`, async () => {
      const [nz, ny, nx] = [2, 70, 90];
      const data = randomStack([nz, ny, nx], bigtiff ? 2 : 3);
      const pages = [0, 1].map((z) => data.subarray(z * ny * nx, (z + 1) * ny * nx));
      const file = path.join(tmp, bigtiff ? 'tiled-big.tif' : 'tiled.tif');
      await fs.writeFile(file, encodeTiledTiff(pages, ny, nx, 32, bigtiff));
      const reader = await openTiffStack(file);
      expect(reader.info.shape).toEqual([nz, ny, nx]);
      expect(reader.info.chunks).toEqual([1, 32, 32]);
      expect(reader.info.dtype).toBe('uint16');
      expect(await assemble(reader)).toEqual(Float32Array.from(data));
      await reader.close?.();
    });
  }

  it('a single page is a 2D array', async () => {
    const file = path.join(tmp, 'one.tif');
    await fs.writeFile(file, encodeTiledTiff([randomStack([1, 40, 50], 4)], 40, 50, 16, false));
    const reader = await openTiffStack(file);
    expect(reader.info.shape).toEqual([40, 50]);
    expect(reader.info.axes.map((a) => a.name)).toEqual(['y', 'x']);
    await reader.close?.();
  });

  it('an RGB TIFF is refused with a message to convert it to one channel', async () => {
    const file = path.join(tmp, 'rgb.tif');
    await sharp(Buffer.alloc(8 * 6 * 3, 100), { raw: { width: 8, height: 6, channels: 3 } }).tiff().toFile(file);
    await expect(openTiffStack(file)).rejects.toThrow(/rgb\.tif.*3 samples per pixel.*single-channel/);
  });

  it('bad files are reported with their name', async () => {
    const file = path.join(tmp, 'garbage.tif');
    await fs.writeFile(file, 'not a tiff at all');
    await expect(openTiffStack(file)).rejects.toThrow(/garbage\.tif.*not a readable TIFF/);
    await expect(openTiffStack(path.join(tmp, 'missing.tif'))).rejects.toThrow(/missing\.tif.*not a readable TIFF/);
    await expect(openFrameFolder(path.join(tmp, 'no-such-folder'))).rejects.toThrow(/no-such-folder.*cannot be listed/);
  });
});

describe('folders of frames', () => {
  it('frames in natural order are Z; each chunk is one frame', async () => {
    const dir = path.join(tmp, 'frames');
    await fs.mkdir(dir);
    const rng = new Rng(5);
    const frames: Float32Array[] = [];
    for (const k of [1, 2, 10]) {
      const data = Float32Array.from({ length: 30 * 40 }, () => rng.int(256));
      frames.push(data);
      await writeImage(path.join(dir, `frame${k}.png`), { data, shape: [30, 40], sampleType: 'uint8' });
    }
    const reader = await openFrameFolder(dir, { axis: 't' });
    expect(reader.info.shape).toEqual([3, 30, 40]);
    expect(reader.info.chunks).toEqual([1, 30, 40]);
    expect(reader.info.axes[0]).toEqual({ name: 't', type: 'time' });
    // frame10 sorts last, not between frame1 and frame2.
    expect(await reader.readChunk([2, 0, 0])).toEqual(frames[2]);
    expect(await reader.readChunk([1, 0, 0])).toEqual(frames[1]);
  });

  it('a frame of another shape or type is named; an empty folder is refused', async () => {
    const dir = path.join(tmp, 'mixed');
    await fs.mkdir(dir);
    await writeImage(path.join(dir, 'a.png'), { data: new Float32Array(12), shape: [3, 4], sampleType: 'uint8' });
    await writeImage(path.join(dir, 'b.png'), { data: new Float32Array(20), shape: [4, 5], sampleType: 'uint8' });
    const reader = await openFrameFolder(dir);
    await expect(reader.readChunk([1, 0, 0])).rejects.toThrow(/b\.png.*same shape/);
    const empty = path.join(tmp, 'empty');
    await fs.mkdir(empty);
    await expect(openFrameFolder(empty)).rejects.toThrow(/empty.*no image frames/);
  });
});
