/**
 * OME-Zarr metadata checked against the NGFF specification (v0.4 and v0.5), field by field.
 * No npm package ships the NGFF JSON schemas: @fideus-labs/ngff-zarr 0.14 has zod schemas that check
 * less than the spec says (no axis order, no unique time axis, no scale-first rule), so every
 * required field is asserted here explicitly.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as zarr from 'zarrita';
import { createOmeZarr, openOmeZarrWriter, type CreateOmeZarrOptions } from '../storage/ome.js';
import { displayableWindow } from '../storage/omeMetadata.js';
import { planPyramid } from '../storage/omePyramid.js';
import { createZarrArray, encodeJson } from '../storage/zarr.js';
import { FileSystemStore } from '../storage/fsStore.js';
import { openChunkedSource } from '../storage/open.js';
import { chunkGrid, type Axis } from '../storage/chunked.js';
import { InputError, OutputError } from '../core/errors.js';
import { VERSION } from '../core/version.js';
import { startLocalS3, swiftAvailable, SWIFT_MISSING_MESSAGE, type LocalS3 } from '../infra/localS3.js';

let dir: string;
beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'blindspot-ome-'));
});
afterAll(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

const NGFF_UNITS_SPACE = new Set([
  'angstrom', 'attometer', 'centimeter', 'decimeter', 'exameter', 'femtometer', 'foot', 'gigameter', 'hectometer', 'inch',
  'kilometer', 'megameter', 'meter', 'micrometer', 'mile', 'millimeter', 'nanometer', 'parsec', 'petameter', 'picometer',
  'terameter', 'yard', 'yoctometer', 'yottameter', 'zeptometer', 'zettameter',
]);

type Json = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

/** Asserts every MUST of the NGFF multiscales spec (0.4 / 0.5) and returns the level paths. */
function assertValidMultiscale(ms: Json, version: '0.4' | '0.5', rank: number): string[] {
  if (version === '0.4') expect(ms.version).toBe('0.4');
  else expect(ms.version).toBeUndefined();
  // axes: 2-5, names unique, types, 2-3 space, at most one time and one channel, order t, c, space.
  const axes = ms.axes as Json[];
  expect(Array.isArray(axes)).toBe(true);
  expect(axes.length).toBeGreaterThanOrEqual(2);
  expect(axes.length).toBeLessThanOrEqual(5);
  expect(axes.length).toBe(rank);
  expect(new Set(axes.map((a) => a.name)).size).toBe(axes.length);
  for (const a of axes) {
    expect(typeof a.name).toBe('string');
    if (a.type !== undefined) expect(typeof a.type).toBe('string');
    if (a.type === 'space' && a.unit !== undefined) expect(NGFF_UNITS_SPACE.has(a.unit)).toBe(true);
  }
  const types = axes.map((a) => a.type);
  const space = types.filter((t) => t === 'space').length;
  expect(space).toBeGreaterThanOrEqual(2);
  expect(space).toBeLessThanOrEqual(3);
  expect(types.filter((t) => t === 'time').length).toBeLessThanOrEqual(1);
  expect(types.filter((t) => t === 'channel').length).toBeLessThanOrEqual(1);
  const order = types.map((t) => (t === 'time' ? 0 : t === 'channel' || t === undefined || t === 'other' ? 1 : 2));
  expect([...order].sort()).toEqual(order);
  // datasets: path, coordinateTransformations = exactly one scale first, at most one translation after it.
  const datasets = ms.datasets as Json[];
  expect(datasets.length).toBeGreaterThanOrEqual(1);
  for (const d of datasets) {
    expect(typeof d.path).toBe('string');
    const transforms = d.coordinateTransformations as Json[];
    expect(transforms.length === 1 || transforms.length === 2).toBe(true);
    expect(transforms[0].type).toBe('scale');
    expect(transforms[0].scale).toHaveLength(rank);
    for (const s of transforms[0].scale) expect(s).toBeGreaterThan(0);
    if (transforms.length === 2) {
      expect(transforms[1].type).toBe('translation');
      expect(transforms[1].translation).toHaveLength(rank);
    }
  }
  if (ms.coordinateTransformations) {
    expect(ms.coordinateTransformations[0].type).toBe('scale');
    expect(ms.coordinateTransformations.length).toBeLessThanOrEqual(2);
  }
  return datasets.map((d) => d.path);
}

function assertValidOmero(omero: Json): void {
  expect(Array.isArray(omero.channels)).toBe(true);
  for (const c of omero.channels) {
    for (const key of ['start', 'end', 'min', 'max']) expect(typeof c.window[key]).toBe('number');
    expect(c.window.start).toBeLessThanOrEqual(c.window.end);
    expect(c.color).toMatch(/^[0-9A-F]{6}$/);
  }
}

const zyxAxes: Axis[] = [
  { name: 'z', type: 'space', unit: 'micrometer' },
  { name: 'y', type: 'space', unit: 'micrometer' },
  { name: 'x', type: 'space', unit: 'micrometer' },
];
const shape = [20, 50, 70];
const chunks = [8, 16, 16];

function valueAt(z: number, y: number, x: number): number {
  return (z * 7 + y * 3 + x) % 251;
}

async function writeLevel0(writer: { info: { shape: readonly number[]; chunks: readonly number[] }; writeChunk(i: number[], v: Float32Array): Promise<Uint8Array> }): Promise<void> {
  const [cz, cy, cx] = writer.info.chunks;
  const grid = chunkGrid(writer.info);
  for (let i = 0; i < grid[0]; i++)
    for (let j = 0; j < grid[1]; j++)
      for (let k = 0; k < grid[2]; k++) {
        const values = new Float32Array(cz * cy * cx);
        for (let z = 0; z < cz; z++) for (let y = 0; y < cy; y++) for (let x = 0; x < cx; x++) {
          const gz = i * cz + z, gy = j * cy + y, gx = k * cx + x;
          if (gz < shape[0] && gy < shape[1] && gx < shape[2]) values[(z * cy + y) * cx + x] = valueAt(gz, gy, gx);
        }
        await writer.writeChunk([i, j, k], values);
      }
}

describe.each(['0.5', '0.4'] as const)('OME-Zarr v%s output', (version) => {
  const placement = { scale: [1.5, 1.5, 1.5], translation: [10, -2, 0.5] };
  const options = (): CreateOmeZarrOptions => ({
    shape, chunks, dtype: 'float32', axes: zyxAxes, placement, ngffVersion: version,
    provenance: { model: 'models/n2v', command: ['blindspot', 'denoise'], tileShape: undefined },
  });

  it('writes metadata valid under the NGFF spec, a mean pyramid, an omero window and provenance; reads back', async () => {
    const url = path.join(dir, `out-${version}.zarr`);
    const writer = await createOmeZarr(url, options());
    await writeLevel0(writer);
    await writer.buildPyramid();
    let attrs: Json;
    if (version === '0.5') {
      const group = JSON.parse(await fs.readFile(path.join(url, 'zarr.json'), 'utf8'));
      expect(group.zarr_format).toBe(3);
      expect(group.node_type).toBe('group');
      expect(group.attributes.ome.version).toBe('0.5');
      attrs = { multiscales: group.attributes.ome.multiscales, omero: group.attributes.ome.omero, blindspot: group.attributes.blindspot };
      // v0.5: the arrays' dimension_names are the axis names.
      const array0 = JSON.parse(await fs.readFile(path.join(url, '0', 'zarr.json'), 'utf8'));
      expect(array0.dimension_names).toEqual(['z', 'y', 'x']);
      expect(array0.codecs.map((c: Json) => c.name)).toEqual(['bytes', 'zstd']);
    } else if (version === '0.4') {
      const array0 = JSON.parse(await fs.readFile(path.join(url, '0', '.zarray'), 'utf8'));
      expect(array0.dimension_separator).toBe('/');
      expect(array0.compressor.id).toBe('zstd');
      attrs = JSON.parse(await fs.readFile(path.join(url, '.zattrs'), 'utf8'));
      expect(JSON.parse(await fs.readFile(path.join(url, '.zgroup'), 'utf8'))).toEqual({ zarr_format: 2 });
    } else {
      throw new Error(`unknown version ${version}`);
    }
    expect(attrs.multiscales).toHaveLength(1);
    const paths = assertValidMultiscale(attrs.multiscales[0], version, 3);
    assertValidOmero(attrs.omero);
    expect(attrs.blindspot.version).toBe(VERSION);
    expect(attrs.blindspot.model).toBe('models/n2v');
    expect(attrs.blindspot.command).toEqual(['blindspot', 'denoise']);
    expect(attrs.multiscales[0].axes).toEqual(zyxAxes);

    // Every level halves y and x (never z: viewers pass one z index to all levels) until y and x fit one chunk.
    const expectedShapes = [[20, 50, 70], [20, 25, 35], [20, 13, 18], [20, 7, 9]];
    expect(paths).toEqual(['0', '1', '2', '3']);
    for (let k = 0; k < paths.length; k++) {
      const array = await zarr.open(new FileSystemStore(path.join(url, paths[k])), { kind: 'array' });
      expect(array.shape).toEqual(expectedShapes[k]);
      const [scale, translation] = attrs.multiscales[0].datasets[k].coordinateTransformations;
      expect(scale.scale).toEqual([1.5, 1.5 * 2 ** k, 1.5 * 2 ** k]);
      // Centre of the first voxel of level k = mean of the level-0 centres it covers (z: the same plane).
      const factor = [1, 2 ** k, 2 ** k];
      expect(translation.translation.map((t: number) => +t.toFixed(9))).toEqual(placement.translation.map((t, a) => +(t + ((factor[a] - 1) / 2) * placement.scale[a]).toFixed(9)));
    }
    // Level 1 values are means of 1x2x2 blocks (one z plane, 2x2 in y and x).
    const level1 = await zarr.get(await zarr.open(new FileSystemStore(path.join(url, '1')), { kind: 'array' }));
    const mean1 = (z: number, y: number, x: number): number => {
      let s = 0;
      for (let dy = 0; dy < 2; dy++) for (let dx = 0; dx < 2; dx++) s += valueAt(z, 2 * y + dy, 2 * x + dx);
      return s / 4;
    };
    const l1 = level1.data as Float32Array;
    for (const [z, y, x] of [[0, 0, 0], [19, 24, 34], [7, 13, 20]]) expect(l1[(z * 25 + y) * 35 + x]).toBeCloseTo(mean1(z, y, x), 4);
    const level2 = await zarr.get(await zarr.open(new FileSystemStore(path.join(url, '2')), { kind: 'array' }));
    const l2 = level2.data as Float32Array;
    // Last y row of level 2 averages level-1 row 24 only (25 rows); last x column averages column 34 only (35 columns).
    for (const z of [0, 13]) expect(l2[(z * 13 + 12) * 18 + 17]).toBeCloseTo(l1[(z * 25 + 24) * 35 + 34], 4);

    const reader = await openChunkedSource(url);
    expect(reader.info.shape).toEqual(shape);
    expect(reader.info.axes).toEqual(zyxAxes);
    expect(reader.info.placement).toEqual(placement);
    const first = await reader.readChunk([0, 0, 0]);
    expect(first[(1 * 16 + 2) * 16 + 3]).toBe(valueAt(1, 2, 3));

    // Same options again: fine, nothing rewritten; different options: OutputError naming the output.
    const again = await createOmeZarr(url, options());
    expect(again.info.shape).toEqual(shape);
    await expect(createOmeZarr(url, { ...options(), chunks: [4, 16, 16] })).rejects.toBeInstanceOf(OutputError);
    await expect(createOmeZarr(url, { ...options(), placement: { scale: [2, 1.5, 1.5], translation: placement.translation } })).rejects.toThrow(url);

    const reopened = await openOmeZarrWriter(url);
    expect(reopened).not.toBeNull();
    expect(reopened!.info.shape).toEqual(shape);
    expect(reopened!.info.chunks).toEqual(chunks);
    expect(reopened!.ngffVersion).toBe(version);
    expect(await reopened!.readStoredChunk([0, 0, 0])).toEqual(await writer.readStoredChunk([0, 0, 0]));
    expect(await openOmeZarrWriter(path.join(dir, 'nothing-here.zarr'))).toBeNull();
  });
});

describe('2D OME-Zarr output', () => {
  it('a pyramid cut short lists only the built levels; a given window is written as given; create stays idempotent', async () => {
    const url = path.join(dir, 'plane.zarr');
    const opts: CreateOmeZarrOptions = {
      shape: [100, 30], chunks: [16, 16], dtype: 'uint16',
      axes: [{ name: 'y', type: 'space' }, { name: 'x', type: 'space' }],
      placement: { scale: [1, 1], translation: [0, 0] },
      window: { start: 5, end: 900, min: 0, max: 1000 },
    };
    const writer = await createOmeZarr(url, opts);
    // No [13, 4] level: viv would read a last axis of 4 as interleaved RGBA.
    expect(writer.levelShapes).toEqual([[100, 30], [50, 15], [25, 8]]);
    const grid = chunkGrid(writer.info);
    for (let i = 0; i < grid[0]; i++) for (let j = 0; j < grid[1]; j++) await writer.writeChunk([i, j], new Float32Array(256).fill(i * 10 + j));
    await writer.buildPyramid({ levels: 2 });
    const group = JSON.parse(await fs.readFile(path.join(url, 'zarr.json'), 'utf8'));
    expect(group.attributes.ome.multiscales[0].datasets.map((d: Json) => d.path)).toEqual(['0', '1']);
    expect(group.attributes.ome.omero.channels[0].window).toEqual(opts.window);
    assertValidMultiscale(group.attributes.ome.multiscales[0], '0.5', 2);
    await expect(createOmeZarr(url, opts)).resolves.toBeDefined();
    const level1 = await zarr.get(await zarr.open(new FileSystemStore(path.join(url, '1')), { kind: 'array' }));
    // Level-1 row 8 averages level-0 rows 16 and 17 (chunk row 1); column 7 averages columns 14, 15 (chunk column 0).
    expect((level1.data as Uint16Array)[8 * 15 + 7]).toBe(10);
    expect((level1.data as Uint16Array)[7 * 15 + 8]).toBe(1);
  });

  it('computes a robust window from the top level when none is given', async () => {
    const url = path.join(dir, 'window.zarr');
    const writer = await createOmeZarr(url, {
      shape: [40, 40], chunks: [16, 16], dtype: 'float32', ngffVersion: '0.4',
      axes: [{ name: 'y', type: 'space' }, { name: 'x', type: 'space' }],
      placement: { scale: [1, 1], translation: [0, 0] },
    });
    const grid = chunkGrid(writer.info);
    for (let i = 0; i < grid[0]; i++) for (let j = 0; j < grid[1]; j++) await writer.writeChunk([i, j], Float32Array.from({ length: 256 }, (_, k) => 100 * i + k));
    await writer.buildPyramid();
    const attrs = JSON.parse(await fs.readFile(path.join(url, '.zattrs'), 'utf8'));
    assertValidOmero(attrs.omero);
    const { window } = attrs.omero.channels[0];
    expect(window.min).toBeLessThanOrEqual(window.start);
    expect(window.end).toBeLessThanOrEqual(window.max);
    expect(window.max).toBeGreaterThan(window.min);
    expect(window.max).toBeLessThanOrEqual(200 + 255);
  });

  it('widens the window of a flat image so that end > start (napari refuses non-increasing contrast limits)', async () => {
    const url = path.join(dir, 'flat.zarr');
    const writer = await createOmeZarr(url, {
      shape: [20, 20], chunks: [16, 16], dtype: 'uint16', ngffVersion: '0.4',
      axes: [{ name: 'y', type: 'space' }, { name: 'x', type: 'space' }],
      placement: { scale: [1, 1], translation: [0, 0] },
    });
    for (const index of [[0, 0], [0, 1], [1, 0], [1, 1]]) await writer.writeChunk(index, new Float32Array(256).fill(7));
    await writer.buildPyramid();
    const { window } = JSON.parse(await fs.readFile(path.join(url, '.zattrs'), 'utf8')).omero.channels[0];
    assertValidOmero({ channels: [{ color: 'FFFFFF', window }] });
    expect(window.start).toBe(7);
    expect(window.end).toBeGreaterThan(window.start);
    expect(window.min).toBeLessThanOrEqual(window.start);
    expect(window.max).toBeGreaterThanOrEqual(window.end);
    expect(displayableWindow({ start: 5, end: 5, min: 2, max: 9 })).toEqual({ start: 2, end: 9, min: 2, max: 9 });
    expect(displayableWindow({ start: Number.NaN, end: 3, min: 0, max: 3 })).toEqual({ start: 0, end: 3, min: 0, max: 3 });
  });
});

describe('pyramid planning', () => {
  it('halves y and x, never z, until y and x fit one chunk', () => {
    const levels = planPyramid([40, 512, 512], [16, 64, 64], { scale: [2, 0.5, 0.5], translation: [3, 0, 0] });
    expect(levels.map((l) => l.shape)).toEqual([[40, 512, 512], [40, 256, 256], [40, 128, 128], [40, 64, 64]]);
    expect(levels[3].placement.scale).toEqual([2, 4, 4]);
    expect(levels[3].placement.translation).toEqual([3, 1.75, 1.75]);
    expect(levels[3].factors).toEqual([1, 2, 2]);
  });

  it('makes no level with 4 or fewer columns (viv reads a last axis of 3 or 4 as RGB(A))', () => {
    expect(planPyramid([400, 36], [16, 16], { scale: [1, 1], translation: [0, 0] }).map((l) => l.shape)).toEqual([[400, 36], [200, 18], [100, 9], [50, 5]]);
  });

  it('2D: stops when the image fits one chunk', () => {
    expect(planPyramid([100, 30], [32, 32], { scale: [1, 1], translation: [0, 0] }).map((l) => l.shape)).toEqual([[100, 30], [50, 15], [25, 8]]);
  });
});

describe('reading OME-Zarr inputs', () => {
  it.each(['0.4', '0.5'] as const)('tczyx v%s with multiscale-level transforms: chooses channel and time, c chunk of 2 sliced', async (version) => {
    const url = path.join(dir, `tczyx-${version}.zarr`);
    const store = new FileSystemStore(url);
    const full = [3, 4, 5, 10, 12];
    const fullChunks = [1, 2, 4, 8, 8];
    const writer = await createZarrArray(store, '/0', { shape: full, chunks: fullChunks, dtype: 'uint16', zarrVersion: version === '0.4' ? 2 : 3 });
    const value = (t: number, c: number, z: number, y: number, x: number): number => t * 10000 + c * 1000 + z * 100 + y * 10 + x;
    const grid = chunkGrid({ shape: full, chunks: fullChunks });
    for (let t = 0; t < grid[0]; t++) for (let c = 0; c < grid[1]; c++) for (let z = 0; z < grid[2]; z++) for (let y = 0; y < grid[3]; y++) for (let x = 0; x < grid[4]; x++) {
      const values = new Float32Array(1 * 2 * 4 * 8 * 8);
      let i = 0;
      for (let dc = 0; dc < 2; dc++) for (let dz = 0; dz < 4; dz++) for (let dy = 0; dy < 8; dy++) for (let dx = 0; dx < 8; dx++) {
        const g = [t, c * 2 + dc, z * 4 + dz, y * 8 + dy, x * 8 + dx];
        values[i++] = g.every((v, a) => v < full[a]) ? value(g[0], g[1], g[2], g[3], g[4]) : 0;
      }
      await writer.writeChunk([t, c, z, y, x], values);
    }
    const multiscale = {
      axes: [
        { name: 't', type: 'time', unit: 'second' }, { name: 'c', type: 'channel' },
        { name: 'z', type: 'space', unit: 'micrometer' }, { name: 'y', type: 'space', unit: 'micrometer' }, { name: 'x', type: 'space', unit: 'micrometer' },
      ],
      datasets: [{ path: '0', coordinateTransformations: [{ type: 'scale', scale: [1, 1, 2, 0.5, 0.5] }, { type: 'translation', translation: [0, 0, 1, 1, 1] }] }],
      coordinateTransformations: [{ type: 'scale', scale: [60, 1, 3, 3, 3] }],
    };
    const omero = { channels: [0, 1, 2, 3].map((c) => ({ color: 'FFFFFF', window: { start: c, end: 100 + c, min: 0, max: 65535 } })) };
    if (version === '0.4') {
      await store.set('/.zgroup', encodeJson({ zarr_format: 2 }));
      await store.set('/.zattrs', encodeJson({ multiscales: [{ version: '0.4', ...multiscale }], omero }));
    } else {
      await store.set('/zarr.json', encodeJson({ zarr_format: 3, node_type: 'group', attributes: { ome: { version: '0.5', multiscales: [multiscale], omero } } }));
    }

    await expect(openChunkedSource(url)).rejects.toBeInstanceOf(InputError);
    await expect(openChunkedSource(url, { time: 1 })).rejects.toThrow(/--channel/);
    await expect(openChunkedSource(url, { channel: 4, time: 0 })).rejects.toThrow(/no channel 4/);

    const reader = await openChunkedSource(url, { channel: 3, time: 2 });
    expect(reader.info.shape).toEqual([5, 10, 12]);
    expect(reader.info.chunks).toEqual([4, 8, 8]);
    expect(reader.info.axes.map((a) => a.name)).toEqual(['z', 'y', 'x']);
    expect(reader.info.axes[0].unit).toBe('micrometer');
    expect(reader.info.dtype).toBe('uint16');
    // Dataset transform first, then the multiscale one: scale 3*s, translation 3*t.
    expect(reader.info.placement).toEqual({ scale: [6, 1.5, 1.5], translation: [3, 3, 3] });
    expect(reader.info.attributes?.window).toEqual({ start: 3, end: 103, min: 0, max: 65535 });
    const chunk = await reader.readChunk([1, 1, 0]);
    expect(chunk).toHaveLength(4 * 8 * 8);
    expect(chunk[0]).toBe(value(2, 3, 4, 8, 0));
    expect(chunk[(0 * 8 + 1) * 8 + 7]).toBe(value(2, 3, 4, 9, 7));
    expect(chunk[(1 * 8 + 0) * 8 + 0]).toBe(0); // z = 5 lies outside: padding
  });

  it('dispatches .tif stacks and folders of frames to their readers', async () => {
    const { writeImage } = await import('../storage/index.js');
    const stack = { data: Float32Array.from({ length: 3 * 6 * 5 }, (_, i) => i), shape: [3, 6, 5] as const, sampleType: 'uint16' as const };
    const tif = path.join(dir, 'stack.tif');
    await writeImage(tif, stack);
    const fromTiff = await openChunkedSource(tif);
    expect(fromTiff.info.shape).toEqual([3, 6, 5]);
    await expect(openChunkedSource(tif, { channel: 1 })).rejects.toBeInstanceOf(InputError);
    const frames = path.join(dir, 'frames');
    await fs.mkdir(frames, { recursive: true });
    for (let z = 0; z < 4; z++) await writeImage(path.join(frames, `f${z}.png`), { data: new Float32Array(6 * 5).fill(z), shape: [6, 5], sampleType: 'uint8' });
    const fromFrames = await openChunkedSource(frames);
    expect(fromFrames.info.shape).toEqual([4, 6, 5]);
    expect((await fromFrames.readChunk([2, 0, 0]))[0]).toBe(2);
  });

  it('names the problem for inputs it cannot read', async () => {
    const empty = path.join(dir, 'empty-folder');
    await fs.mkdir(empty, { recursive: true });
    await expect(openChunkedSource(empty)).rejects.toThrow(/no Zarr metadata and no image frames/);
    await expect(openChunkedSource(path.join(dir, 'absent.zarr'))).rejects.toThrow(/does not exist/);
    const group = path.join(dir, 'plain-group.zarr');
    await new FileSystemStore(group).set('/.zgroup', encodeJson({ zarr_format: 2 }));
    await expect(openChunkedSource(group)).rejects.toThrow(/group without OME/);
    const odd = path.join(dir, 'notes.txt');
    await fs.writeFile(odd, 'hi');
    await expect(openChunkedSource(odd)).rejects.toBeInstanceOf(InputError);
  });
});

const swiftSkip = !swiftAvailable();
if (swiftSkip) console.log(`ome.test S3 part: skipped: ${SWIFT_MISSING_MESSAGE}`);

describe.skipIf(swiftSkip)('OME-Zarr on S3 (local Swift)', () => {
  let s3: LocalS3;
  beforeAll(async () => {
    s3 = await startLocalS3({ buckets: ['blindspot-ome'], exportCredentials: true });
  }, 120_000);
  afterAll(async () => {
    await s3?.stop();
  });

  it.each(['0.5', '0.4'] as const)('v%s: written to s3://, reopened for resume, read back through openChunkedSource', async (version) => {
    const url = `s3://blindspot-ome/run/out-${version}.zarr`;
    const settings = { endpoint: s3.endpoint };
    const opts: CreateOmeZarrOptions = {
      shape: [12, 40, 36], chunks: [8, 16, 16], dtype: 'uint16', axes: zyxAxes, ngffVersion: version,
      placement: { scale: [1, 1, 1], translation: [0, 0, 0] },
    };
    const writer = await createOmeZarr(url, { ...opts, s3: settings });
    const grid = chunkGrid(writer.info);
    for (let i = 0; i < grid[0]; i++) for (let j = 0; j < grid[1]; j++) for (let k = 0; k < grid[2]; k++) {
      await writer.writeChunk([i, j, k], new Float32Array(8 * 16 * 16).fill(100 * i + 10 * j + k));
    }
    await writer.buildPyramid();
    expect(await openOmeZarrWriter(`s3://blindspot-ome/run/absent-${version}.zarr`, settings)).toBeNull();
    const reopened = await openOmeZarrWriter(url, settings);
    expect(reopened!.levelShapes).toEqual([[12, 40, 36], [12, 20, 18], [12, 10, 9]]);
    const reader = await openChunkedSource(url, { s3: settings });
    expect(reader.info.shape).toEqual([12, 40, 36]);
    expect((await reader.readChunk([1, 2, 1]))[0]).toBe(121);
    await expect(createOmeZarr(url, { ...opts, chunks: [4, 16, 16], s3: settings })).rejects.toBeInstanceOf(OutputError);
  });
});
