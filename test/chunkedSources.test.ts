import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
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
import { openChunkedSource } from '../storage/open.js';
import { denoiseUrl, parseByteSize } from '../pipeline/streamDenoise.js';
import type { UNetConfig } from '../models/unet.js';
import { encodeTiledTiff, TiffTag, type ExtraTiffTag } from './fixtures/tiledTiff.js';
import { saveUntrainedModel } from './fixtures/untrainedModel.js';

let tmp: string;
beforeAll(async () => {
  await tf.setBackend('cpu');
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
    // Found from the headers when the folder is opened, before anything could be written.
    await expect(openFrameFolder(dir)).rejects.toThrow(/b\.png.*same shape/);
    const empty = path.join(tmp, 'empty');
    await fs.mkdir(empty);
    await expect(openFrameFolder(empty)).rejects.toThrow(/empty.*no image frames/);
  });
});

// ---------------------------------------------------------------------------------------------
// ImageJ hyperstacks and OME-TIFFs: channels, slices and time points, voxel size and units.

const [NC, NZ, NT, H, W] = [2, 3, 2, 20, 24];

/** A page whose every value says which plane it is (and varies across the page). */
function planePage(c: number, z: number, t: number): Uint16Array {
  return Uint16Array.from({ length: H * W }, (_, i) => 1000 * (c + 1) + 100 * z + 10 * t + (i % 7));
}

/** Pages in the order a writer stores them: the first of `order` (after XY) varies fastest. */
function pagesInOrder(order: string): Uint16Array[] {
  const extent: Record<string, number> = { C: NC, Z: NZ, T: NT };
  const [a, b, c] = order.slice(2).split('');
  const pages: Uint16Array[] = [];
  for (let k = 0; k < extent[c]; k++)
    for (let j = 0; j < extent[b]; j++)
      for (let i = 0; i < extent[a]; i++) {
        const at: Record<string, number> = { [a]: i, [b]: j, [c]: k };
        pages.push(planePage(at.C, at.Z, at.T));
      }
  return pages;
}

/** What the reader must return for one channel and time point: slices z = 0.. of it. */
function expectedStack(c: number, t: number): Float32Array {
  const out = new Float32Array(NZ * H * W);
  for (let z = 0; z < NZ; z++) out.set(planePage(c, z, t), z * H * W);
  return out;
}

const imageJDescription = (fields: Record<string, string | number>): ExtraTiffTag => ({
  tag: TiffTag.ImageDescription,
  type: 'ascii',
  value: `ImageJ=1.54f\n${Object.entries(fields).map(([k, v]) => `${k}=${v}`).join('\n')}\n`,
});

const micronPerQuarter: ExtraTiffTag[] = [
  { tag: TiffTag.XResolution, type: 'rational', value: [4, 1] },
  { tag: TiffTag.YResolution, type: 'rational', value: [4, 1] },
  { tag: TiffTag.ResolutionUnit, type: 'short', value: 1 },
];

const hyperstackFields = { images: NC * NZ * NT, channels: NC, slices: NZ, frames: NT, hyperstack: 'true', mode: 'grayscale', unit: 'micron', spacing: 0.5, finterval: 2, loop: 'false' };

async function writeTiff(name: string, pages: Uint16Array[], tags: ExtraTiffTag[], bigtiff = false): Promise<string> {
  const file = path.join(tmp, name);
  await fs.writeFile(file, encodeTiledTiff(pages, H, W, 16, bigtiff, tags));
  return file;
}

function omeXml(order: string, extra: { pixels?: string; tiffData?: string; images?: number } = {}): string {
  const image = (k: number): string =>
    `<Image ID="Image:${k}" Name="cells"><Pixels ID="Pixels:${k}" DimensionOrder="${order}" Type="uint16" SizeX="${W}" SizeY="${H}" ` +
    `SizeZ="${NZ}" SizeC="${NC}" SizeT="${NT}" ${extra.pixels ?? 'PhysicalSizeX="0.25" PhysicalSizeXUnit="&#181;m" PhysicalSizeY="0.25" PhysicalSizeYUnit="µm" PhysicalSizeZ="0.5"'}>` +
    `<Channel ID="Channel:${k}:0" SamplesPerPixel="1"/><Channel ID="Channel:${k}:1" SamplesPerPixel="1"/>` +
    `${extra.tiffData ?? `<TiffData IFD="0" PlaneCount="${NC * NZ * NT}"/>`}</Pixels></Image>`;
  return (
    '<?xml version="1.0" encoding="UTF-8"?>\n' +
    '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06" UUID="urn:uuid:1111" Creator="test">' +
    Array.from({ length: extra.images ?? 1 }, (_, k) => image(k)).join('') +
    '</OME>'
  );
}

describe('ImageJ hyperstacks', () => {
  it('2 channels x 3 slices x 2 frames: each channel and time point is the right 3 pages, placed in micrometres', async () => {
    const file = await writeTiff('hyper.tif', pagesInOrder('XYCZT'), [imageJDescription(hyperstackFields), ...micronPerQuarter]);
    for (const [c, t] of [[1, 1], [0, 1], [1, 0], [0, 0]]) {
      const reader = await openChunkedSource(file, { channel: c, time: t });
      expect(reader.info.shape).toEqual([NZ, H, W]);
      expect(reader.info.placement).toEqual({ scale: [0.5, 0.25, 0.25], translation: [0, 0, 0] });
      expect(reader.info.axes).toEqual(['z', 'y', 'x'].map((name) => ({ name, type: 'space', unit: 'micrometer' })));
      expect(await assemble(reader), `channel ${c} time ${t}`).toEqual(expectedStack(c, t));
      await reader.close?.();
    }
  });

  it('a channel or time point must be chosen, and must exist; the message names the file and the sizes', async () => {
    const file = await writeTiff('hyper-choose.tif', pagesInOrder('XYCZT'), [imageJDescription(hyperstackFields), ...micronPerQuarter]);
    await expect(openChunkedSource(file)).rejects.toThrow(/hyper-choose\.tif: is an ImageJ hyperstack of 2 channels x 3 slices x 2 time points; choose a channel with --channel \(0 to 1\) and a time point with --time \(0 to 1\)/);
    const timeMissing = await openChunkedSource(file, { channel: 0 }).then(() => null, (err: Error) => err.message);
    expect(timeMissing).toMatch(/choose a time point with --time \(0 to 1\)$/);
    expect(timeMissing).not.toMatch(/--channel/);
    await expect(openChunkedSource(file, { channel: 2, time: 0 })).rejects.toThrow(/hyper-choose\.tif: has no channel 2 \(axis c has 2\)/);
    await expect(openChunkedSource(file, { channel: 0, time: 5 })).rejects.toThrow(/has no time point 5 \(axis t has 2\)/);
    // Whole-image reads cannot choose: refused, pointing at streaming.
    await expect(readImage(file)).rejects.toThrow(/hyper-choose\.tif: is an ImageJ hyperstack of 2 channels x 3 slices x 2 time points;.*--channel and --time/);
  });

  it('a time series without channels or slices is 2D per time point; a calibrated z-stack reads in memory too', async () => {
    const frames = [0, 1].map((t) => planePage(0, 0, t));
    const series = await writeTiff('series.tif', frames, [imageJDescription({ images: 2, frames: 2, unit: '\\u00B5m' }), ...micronPerQuarter]);
    const reader = await openChunkedSource(series, { time: 1 });
    expect(reader.info.shape).toEqual([H, W]);
    expect(reader.info.placement.scale).toEqual([0.25, 0.25]);
    expect(reader.info.axes.map((a) => a.unit)).toEqual(['micrometer', 'micrometer']);
    expect(await assemble(reader)).toEqual(Float32Array.from(frames[1]));
    await expect(openChunkedSource(series, { channel: 1, time: 0 })).rejects.toThrow(/has no channel axis.*so channel 1 does not exist/);

    const zPages = [0, 1, 2].map((z) => planePage(0, z, 0));
    const zStack = await writeTiff('zstack.tif', zPages, [imageJDescription({ images: 3, slices: 3, unit: 'nm', spacing: 200 }), ...micronPerQuarter]);
    const z = await openChunkedSource(zStack);
    expect(z.info.placement.scale).toEqual([200, 0.25, 0.25]);
    expect(z.info.axes.map((a) => a.unit)).toEqual(['nanometer', 'nanometer', 'nanometer']);
    expect((await readImage(zStack)).shape).toEqual([3, H, W]);
  });

  it('metadata that contradicts the pages is refused with the numbers', async () => {
    const pages = pagesInOrder('XYCZT');
    const fewer = await writeTiff('hyper-images.tif', pages, [imageJDescription({ ...hyperstackFields, images: 10, slices: 5, frames: 1 })]);
    await expect(openChunkedSource(fewer, { channel: 0 })).rejects.toThrow(/hyper-images\.tif: has an ImageJ description of images=10 \(2 channels x 5 slices x 1 frames\) but 12 page\(s\)/);
    const product = await writeTiff('hyper-product.tif', pages, [imageJDescription({ ...hyperstackFields, slices: 4 })]);
    await expect(openChunkedSource(product, { channel: 0, time: 0 })).rejects.toThrow(/hyper-product\.tif: .*2 channels x 4 slices x 2 frames that does not multiply to its images=12/);
    // ImageJ's layout of stacks over 4 GiB: one page directory for all planes.
    const onePage = await writeTiff('hyper-onepage.tif', [pages[0]], [imageJDescription(hyperstackFields)]);
    await expect(openChunkedSource(onePage, { channel: 0, time: 0 })).rejects.toThrow(/hyper-onepage\.tif: .*images=12.*but 1 page\(s\): ImageJ saves stacks over 4 GiB this way/);
  });

  it('a plain stack keeps unit scale; channel 0 is accepted, channel 1 is not', async () => {
    const file = await writeTiff('plain.tif', [0, 1, 2].map((z) => planePage(0, z, 0)), micronPerQuarter);
    const reader = await openChunkedSource(file, { channel: 0 });
    expect(reader.info.placement).toEqual({ scale: [1, 1, 1], translation: [0, 0, 0] });
    expect(reader.info.axes.every((a) => a.unit === undefined)).toBe(true);
    expect(await assemble(reader)).toEqual(expectedStack(0, 0));
    await expect(openChunkedSource(file, { channel: 1 })).rejects.toThrow(/plain\.tif: has no channel axis/);
  });
});

describe('OME-TIFF', () => {
  for (const [order, bigtiff] of [['XYCZT', false], ['XYZCT', true], ['XYTZC', false]] as const) {
    it(`DimensionOrder ${order}${bigtiff ? ' (BigTIFF)' : ''}: the chosen channel and time point, placed by PhysicalSize`, async () => {
      const file = await writeTiff(`cells-${order}.ome.tif`, pagesInOrder(order), [{ tag: TiffTag.ImageDescription, type: 'ascii', value: omeXml(order) }], bigtiff);
      await expect(openChunkedSource(file)).rejects.toThrow(new RegExp(`cells-${order}\\.ome\\.tif: is an OME-TIFF of 2 channels x 3 slices x 2 time points; choose a channel with --channel`));
      for (const [c, t] of [[1, 1], [0, 1], [1, 0]]) {
        const reader = await openChunkedSource(file, { channel: c, time: t });
        expect(reader.info.shape).toEqual([NZ, H, W]);
        expect(reader.info.placement).toEqual({ scale: [0.5, 0.25, 0.25], translation: [0, 0, 0] });
        expect(reader.info.axes.map((a) => a.unit)).toEqual(['micrometer', 'micrometer', 'micrometer']);
        expect(await assemble(reader), `channel ${c} time ${t}`).toEqual(expectedStack(c, t));
        await reader.close?.();
      }
    });
  }

  it('TiffData maps planes to pages; other units are named in NGFF terms', async () => {
    // Pages stored T-major but declared through one TiffData per plane, in reverse page order.
    const pages = pagesInOrder('XYZCT').reverse();
    const planes: string[] = [];
    for (let t = 0; t < NT; t++) for (let c = 0; c < NC; c++) for (let z = 0; z < NZ; z++) {
      const ordinal = z + NZ * (c + NC * t);
      planes.push(`<TiffData IFD="${pages.length - 1 - ordinal}" FirstZ="${z}" FirstC="${c}" FirstT="${t}" PlaneCount="1"/>`);
    }
    const xml = omeXml('XYZCT', { tiffData: planes.join(''), pixels: 'PhysicalSizeX="0.1" PhysicalSizeY="0.1" PhysicalSizeZ="300" PhysicalSizeZUnit="nm"' });
    const file = await writeTiff('mapped.ome.tif', pages, [{ tag: TiffTag.ImageDescription, type: 'ascii', value: xml }]);
    const reader = await openChunkedSource(file, { channel: 1, time: 0 });
    expect(await assemble(reader)).toEqual(expectedStack(1, 0));
    expect(reader.info.placement.scale).toEqual([300, 0.1, 0.1]);
    expect(reader.info.axes.map((a) => a.unit)).toEqual(['nanometer', 'micrometer', 'micrometer']);
  });

  it('multi-file, multi-image and contradicting OME-TIFFs are refused with what is wrong', async () => {
    const pages = pagesInOrder('XYCZT');
    const description = (xml: string): ExtraTiffTag[] => [{ tag: TiffTag.ImageDescription, type: 'ascii', value: xml }];
    const split = omeXml('XYCZT', { tiffData: '<TiffData IFD="0" PlaneCount="6"/><TiffData FirstT="1" IFD="0" PlaneCount="6"><UUID FileName="cells_t1.ome.tif">urn:uuid:2222</UUID></TiffData>' });
    await expect(openChunkedSource(await writeTiff('cells_t0.ome.tif', pages.slice(0, 6), description(split)), { channel: 0, time: 0 })).rejects.toThrow(
      /cells_t0\.ome\.tif: is part of a multi-file OME-TIFF \(planes in cells_t1\.ome\.tif\); blindspot reads single-file OME-TIFFs/,
    );
    await expect(openChunkedSource(await writeTiff('two-series.ome.tif', pages, description(omeXml('XYCZT', { images: 2 }))), { channel: 0, time: 0 })).rejects.toThrow(
      /two-series\.ome\.tif: holds 2 images \(series\)/,
    );
    const wrongSize = omeXml('XYCZT').replace(`SizeX="${W}"`, 'SizeX="512"');
    await expect(openChunkedSource(await writeTiff('wrong-size.ome.tif', pages, description(wrongSize)), { channel: 0, time: 0 })).rejects.toThrow(
      /wrong-size\.ome\.tif: has OME-XML SizeX=512 SizeY=20 but its first page is 24x20/,
    );
    const short = omeXml('XYCZT', { tiffData: '' });
    await expect(openChunkedSource(await writeTiff('short.ome.tif', pages.slice(0, 8), description(short)), { channel: 0, time: 0 })).rejects.toThrow(
      /short\.ome\.tif: has OME-XML of 2 channels x 3 slices x 2 time points \(12 planes\) but 8 page\(s\)/,
    );
  });
});

describe('streaming denoise of a hyperstack', () => {
  it('writes OME-Zarr of the chosen channel and time point with the ImageJ voxel size, equal to denoising those pages alone', async () => {
    const cfg: UNetConfig = { dims: 3, depth: 1, filters: 2, kernelSize: 3, batchNorm: false, variant: 'n2v' };
    const modelDir = path.join(tmp, 'model3d');
    await saveUntrainedModel(modelDir, cfg, { mode: 'meanstd', offset: 1500, scale: 500 }, 7);
    const hyper = await writeTiff('denoise-hyper.tif', pagesInOrder('XYCZT'), [imageJDescription(hyperstackFields), ...micronPerQuarter]);
    const alone = await writeTiff('denoise-alone.tif', [0, 1, 2].map((z) => planePage(1, z, 1)), []);
    const common = { modelDir, maxMemoryBytes: parseByteSize('512MiB'), outputChunks: [4, 16, 16] };
    const out = path.join(tmp, 'hyper-denoised.zarr');
    await denoiseUrl({ ...common, input: hyper, out, channel: 1, time: 1 });
    await denoiseUrl({ ...common, input: alone, out: path.join(tmp, 'alone-denoised.zarr') });

    const group = JSON.parse(await fs.readFile(path.join(out, 'zarr.json'), 'utf8')) as {
      attributes: { ome: { multiscales: { axes: { name: string; unit?: string }[]; datasets: { coordinateTransformations: { type: string; scale?: number[] }[] }[] }[] } };
    };
    const multiscale = group.attributes.ome.multiscales[0];
    expect(multiscale.axes).toEqual(['z', 'y', 'x'].map((name) => ({ name, type: 'space', unit: 'micrometer' })));
    expect(multiscale.datasets[0].coordinateTransformations[0]).toEqual({ type: 'scale', scale: [0.5, 0.25, 0.25] });
    const denoised = await openChunkedSource(out);
    expect(denoised.info.shape).toEqual([NZ, H, W]);
    const reference = await openChunkedSource(path.join(tmp, 'alone-denoised.zarr'));
    const values = await assemble(denoised);
    expect(values).toEqual(await assemble(reference));
    // The model did something: the output is not the input.
    expect(values).not.toEqual(expectedStack(1, 1));
  });
});
