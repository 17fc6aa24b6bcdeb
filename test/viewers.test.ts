/**
 * blindspot's OME-Zarr outputs opened the way the viewers open them (issue 3: "It must open in
 * napari (ome-zarr) and vizarr").
 *
 * - viv (@vivjs/loaders 0.21, the loader layer under vizarr, Avivator and Vitessce): `loadOmeZarr`
 *   over HTTP from a local static server, as a browser fetches, for v0.4 (Zarr v2) and v0.5 (Zarr v3).
 *   Levels, shapes, labels, dtype, and getRaster / getTile pixels against blindspot's own reader.
 * - vizarr's own open path (src/io.ts createSourceData -> src/ome.ts loadOmeMultiscales, on zarrita):
 *   each requirement of that code asserted, and its tile read (zarr.get of [z, y slice, x slice])
 *   reproduced with zarrita over the same HTTP server.
 * - ome-zarr-py's reader and napari-ome-zarr (Python; not runnable here): every check their readers
 *   make, asserted on the stored documents.
 * Each check names the viewer file and function it comes from. Outputs come from blindspot's own
 * writers: createOmeZarr + buildPyramid (2D uint16, 3D float32) and a tiny streamed denoise (denoiseUrl).
 */
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { promises as fs } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import * as zarr from 'zarrita';
import { loadOmeZarr } from '@vivjs/loaders';
import { createOmeZarr, type CreateOmeZarrOptions } from '../storage/ome.js';
import { openZarrArray } from '../storage/zarr.js';
import { FileSystemStore } from '../storage/fsStore.js';
import { chunkGrid, type Axis, type ChunkedArrayReader } from '../storage/chunked.js';
import { Rng } from '../core/rng.js';
import { voxelCount } from '../core/volume.js';
import { defaultUNetConfig, type UNetConfig } from '../models/unet.js';
import type { Normalisation } from '../models/normalise.js';
import { denoiseUrl, parseByteSize } from '../pipeline/streamDenoise.js';
import { cutChunk } from './fixtures/stream-arrays.js';
import { saveUntrainedModel } from './fixtures/untrainedModel.js';

type Json = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

interface Output {
  name: string;
  version: '0.4' | '0.5';
  dtype: 'uint16' | 'float32';
  /** Level 0 as written (null for the streamed outputs: their pixels come from a model). */
  written: Float32Array | null;
}

let dir = '';
let server: http.Server;
let baseUrl = '';
const outputs: Output[] = [];

/** A read-only static file server over `root`: what a browser viewer talks to. 404 for what is absent. */
function serve(root: string): Promise<http.Server> {
  const s = http.createServer((req, res) => {
    const file = path.resolve(root, '.' + decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname));
    if (!file.startsWith(root + path.sep) || req.method !== 'GET') {
      res.writeHead(404).end();
      return;
    }
    fs.readFile(file).then(
      (bytes) => res.writeHead(200, { 'content-type': 'application/octet-stream' }).end(bytes),
      () => res.writeHead(404).end(),
    );
  });
  return new Promise((resolve) => s.listen(0, '127.0.0.1', () => resolve(s)));
}

async function writeOutput(name: string, version: '0.4' | '0.5', opts: Omit<CreateOmeZarrOptions, 'ngffVersion'>, data: Float32Array): Promise<Output> {
  const writer = await createOmeZarr(path.join(dir, name), { ...opts, ngffVersion: version });
  const grid = chunkGrid(writer.info);
  for (let i = 0; i < voxelCount(grid); i++) {
    const index = grid.map((_, axis) => Math.floor(i / voxelCount(grid.slice(axis + 1))) % grid[axis]);
    await writer.writeChunk(index, cutChunk(data, opts.shape, opts.chunks, index));
  }
  await writer.buildPyramid();
  await writer.close?.();
  return { name, version, dtype: opts.dtype as Output['dtype'], written: data };
}

beforeAll(async () => {
  dir = await fs.realpath(await fs.mkdtemp(path.join(os.tmpdir(), 'blindspot-viewers-')));
  server = await serve(dir);
  baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const rng = new Rng(31);
  const micrometer = (name: string): Axis => ({ name, type: 'space', unit: 'micrometer' });
  const plane = { shape: [70, 90], chunks: [32, 32] };
  const planeData = Float32Array.from({ length: voxelCount(plane.shape) }, () => rng.int(4000));
  // Tall and narrow: halving x would reach 3 columns, which viv would read as RGB.
  const narrow = { shape: [200, 36], chunks: [16, 16] };
  const narrowData = Float32Array.from({ length: voxelCount(narrow.shape) }, () => rng.int(60000));
  const stack = { shape: [6, 40, 50], chunks: [2, 16, 16] };
  const stackData = Float32Array.from({ length: voxelCount(stack.shape) }, () => 50 + 10 * rng.normal());
  for (const version of ['0.5', '0.4'] as const) {
    outputs.push(await writeOutput(`yx-uint16-v${version}.zarr`, version, {
      ...plane, dtype: 'uint16', axes: [micrometer('y'), micrometer('x')], placement: { scale: [0.65, 0.65], translation: [0, 0] },
    }, planeData));
    outputs.push(await writeOutput(`zyx-float32-v${version}.zarr`, version, {
      ...stack, dtype: 'float32', axes: ['z', 'y', 'x'].map(micrometer), placement: { scale: [2, 0.5, 0.5], translation: [1, -3, 4] },
    }, stackData));
    outputs.push(await writeOutput(`yx-narrow-uint16-v${version}.zarr`, version, {
      ...narrow, dtype: 'uint16', axes: [{ name: 'y', type: 'space' }, { name: 'x', type: 'space' }], placement: { scale: [1, 1], translation: [0, 0] },
    }, narrowData));
  }

  // The pipeline's own output: a tiny streamed denoise with an untrained U-Net (pixels are not the point).
  await tf.setBackend('cpu');
  const normalisation: Normalisation = { mode: 'meanstd', offset: 100, scale: 20 };
  const cfg: UNetConfig = { ...defaultUNetConfig(2), filters: 4 };
  const modelDir = path.join(dir, 'model');
  await saveUntrainedModel(modelDir, cfg, normalisation, 5);
  const input = 'denoise-input.zarr';
  const inputShape = [48, 72];
  await writeOutput(input, '0.5', { shape: inputShape, chunks: [16, 16], dtype: 'float32', axes: [micrometer('y'), micrometer('x')], placement: { scale: [0.3, 0.3], translation: [2, 2] } },
    Float32Array.from({ length: voxelCount(inputShape) }, () => 100 + 20 * rng.normal()));
  for (const version of ['0.5', '0.4'] as const) {
    const name = `denoised-v${version}.zarr`;
    await denoiseUrl({ input: path.join(dir, input), out: path.join(dir, name), modelDir, maxMemoryBytes: parseByteSize('1GiB'), outputChunks: [16, 16], ngffVersion: version });
    outputs.push({ name, version, dtype: 'float32', written: null });
  }
}, 120_000);

afterAll(async () => {
  await new Promise((resolve) => server?.close(resolve));
  if (dir) await fs.rm(dir, { recursive: true, force: true });
});

// ---------------------------------------------------------------------------------------------
// What blindspot itself reads

async function readJson(file: string): Promise<Json> {
  return JSON.parse(await fs.readFile(file, 'utf8')) as Json;
}

/** The group's OME attributes (v0.5: zarr.json attributes.ome; v0.4: .zattrs) and the raw group document. */
async function omeAttributes(output: Output): Promise<{ ome: Json; group: Json }> {
  const root = path.join(dir, output.name);
  if (output.version === '0.5') {
    const group = await readJson(path.join(root, 'zarr.json'));
    return { ome: group.attributes.ome, group };
  }
  return { ome: await readJson(path.join(root, '.zattrs')), group: await readJson(path.join(root, '.zgroup')) };
}

/** A whole pyramid level read with blindspot's own Zarr reader, C order. */
async function readLevel(output: Output, level: string): Promise<{ shape: number[]; chunks: number[]; values: Float32Array }> {
  const reader: ChunkedArrayReader = await openZarrArray(new FileSystemStore(path.join(dir, output.name)), { arrayPath: level });
  const { shape, chunks } = reader.info;
  const values = new Float32Array(voxelCount(shape));
  const grid = chunkGrid(reader.info);
  const shape3 = shape.length === 2 ? [1, ...shape] : shape;
  const chunks3 = chunks.length === 2 ? [1, ...chunks] : chunks;
  for (let i = 0; i < voxelCount(grid); i++) {
    const index = grid.map((_, axis) => Math.floor(i / voxelCount(grid.slice(axis + 1))) % grid[axis]);
    const chunk = await reader.readChunk(index);
    const [iz, iy, ix] = index.length === 2 ? [0, ...index] : index;
    for (let z = 0; z < chunks3[0] && iz * chunks3[0] + z < shape3[0]; z++) {
      for (let y = 0; y < chunks3[1] && iy * chunks3[1] + y < shape3[1]; y++) {
        const x0 = ix * chunks3[2];
        const width = Math.min(chunks3[2], shape3[2] - x0);
        const from = (z * chunks3[1] + y) * chunks3[2];
        values.set(chunk.subarray(from, from + width), ((iz * chunks3[0] + z) * shape3[1] + iy * chunks3[1] + y) * shape3[2] + x0);
      }
    }
  }
  return { shape: [...shape], chunks: [...chunks], values };
}

/** Region [y0, y1) x [x0, x1) of plane z of a C-order YX or ZYX array. */
function region(values: Float32Array, shape: number[], z: number, y0: number, y1: number, x0: number, x1: number): number[] {
  const [ny, nx] = shape.slice(-2);
  const out: number[] = [];
  for (let y = y0; y < y1; y++) for (let x = x0; x < x1; x++) out.push(values[(z * ny + y) * nx + x]);
  return out;
}

/** The plane index vizarr/viv are asked for: omero rdefs.defaultZ for ZYX (src/ome.ts parseOmeroMeta). */
function defaultPlane(ome: Json, rank: number): number {
  return rank === 3 ? ome.omero.rdefs.defaultZ : 0;
}

const VIV_DTYPE: Record<Output['dtype'], string> = { uint16: 'Uint16', float32: 'Float32' };

describe('outputs under test', () => {
  it('cover YX (square and narrow) and ZYX, uint16 and float32, v0.5 and v0.4, pyramids of >= 2 levels, and the streamed denoise', async () => {
    expect(outputs.map((o) => o.name).sort()).toEqual([
      'denoised-v0.4.zarr', 'denoised-v0.5.zarr', 'yx-narrow-uint16-v0.4.zarr', 'yx-narrow-uint16-v0.5.zarr',
      'yx-uint16-v0.4.zarr', 'yx-uint16-v0.5.zarr', 'zyx-float32-v0.4.zarr', 'zyx-float32-v0.5.zarr',
    ]);
    for (const output of outputs) {
      const { ome } = await omeAttributes(output);
      expect(ome.multiscales[0].datasets.length, output.name).toBeGreaterThanOrEqual(2);
      if (output.written) expect((await readLevel(output, '0')).values).toEqual(output.written);
    }
  });
});

describe.each(['yx-uint16', 'yx-narrow-uint16', 'zyx-float32', 'denoised'])('%s', (stem) => {
  describe.each(['0.5', '0.4'] as const)('v%s', (version) => {
    const output = (): Output => outputs.find((o) => o.name === `${stem}-v${version}.zarr`)!;

    it('viv loadOmeZarr: every level opens with its shape, labels and dtype; getRaster and every getTile equal our reader', async () => {
      const o = output();
      const { ome } = await omeAttributes(o);
      const multiscale = ome.multiscales[0];
      const names: string[] = multiscale.axes.map((a: Json) => a.name);
      const { data, metadata } = await loadOmeZarr(`${baseUrl}/${o.name}`, { type: 'multiscales' });
      // viv's loadMultiscales (@vivjs/loaders index.mjs): v0.5 is recognised by attributes.ome and unwrapped.
      expect((metadata as Json).multiscales[0].datasets.map((d: Json) => d.path)).toEqual(multiscale.datasets.map((d: Json) => d.path));
      expect(data).toHaveLength(multiscale.datasets.length);
      const plane = defaultPlane(ome, names.length);
      for (let k = 0; k < data.length; k++) {
        const source = data[k];
        const ours = await readLevel(o, multiscale.datasets[k].path);
        expect(source.shape).toEqual(ours.shape);
        expect(source.labels).toEqual(names);
        expect(source.dtype).toBe(VIV_DTYPE[o.dtype]);
        // viv guessTileSize: the largest power of two not above the y/x chunk (the same chunks at every level).
        expect(source.tileSize).toBe(2 ** Math.floor(Math.log2(Math.min(...ours.chunks.slice(-2)))));
        const [height, width] = ours.shape.slice(-2);
        const selection = ours.shape.map(() => 0);
        if (names.length === 3) selection[0] = plane;
        const raster = await source.getRaster({ selection });
        expect([raster.height, raster.width]).toEqual([height, width]);
        expect(Array.from(raster.data as ArrayLike<number>)).toEqual(region(ours.values, ours.shape, plane, 0, height, 0, width));
        const tile = source.tileSize;
        for (let ty = 0; ty * tile < height; ty++) {
          for (let tx = 0; tx * tile < width; tx++) {
            const got = await source.getTile({ x: tx, y: ty, selection });
            const [y1, x1] = [Math.min(height, (ty + 1) * tile), Math.min(width, (tx + 1) * tile)];
            expect([got.height, got.width]).toEqual([y1 - ty * tile, x1 - tx * tile]);
            expect(Array.from(got.data as ArrayLike<number>), `${o.name} level ${k} tile ${ty},${tx}`).toEqual(region(ours.values, ours.shape, plane, ty * tile, y1, tx * tile, x1));
          }
        }
      }
    });

    it("vizarr's open path (src/io.ts, src/ome.ts, src/utils.ts, src/ZarrPixelSource.ts): every requirement holds; its tile read equals our reader", async () => {
      const o = output();
      // utils.ts open(): zarr.open on a FetchStore location, Zarr v2 or v3 found by zarrita.
      const node = await zarr.open(zarr.root(new zarr.FetchStore(`${baseUrl}/${o.name}`)));
      expect(node).toBeInstanceOf(zarr.Group);
      const group = node as zarr.Group<zarr.Readable>;
      // utils.ts resolveAttrs(): 'ome' in attrs -> attrs.ome (v0.5); else the attributes themselves (v0.4).
      const attrs = ('ome' in group.attrs ? group.attrs.ome : group.attrs) as Json;
      expect('ome' in group.attrs).toBe(o.version === '0.5');
      // io.ts createSourceData(): isOmeroMultiscales (omero and multiscales) -> ome.ts loadOmeMultiscales.
      expect(attrs.multiscales).toBeDefined();
      expect(attrs.omero).toBeDefined();
      const multiscale = attrs.multiscales[0];
      // utils.ts getNgffAxes()/getNgffAxisLabels(): axis objects {name, type}; labels are the names.
      const labels: string[] = multiscale.axes.map((a: Json) => a.name);
      const rank = labels.length;
      // ZarrPixelSource.ts buildZarrSelection(): indexes labels 'x' and 'y' and slices them; width/height are the last two axes (no 'c').
      expect(labels.indexOf('x')).toBe(rank - 1);
      expect(labels.indexOf('y')).toBe(rank - 2);
      expect(labels).not.toContain('c');
      // ome.ts parseOmeroMeta(): channel_axis = index of the axis of type 'channel' (-1: none), so one omero channel.
      const channelAxis = multiscale.axes.findIndex((a: Json) => a.type === 'channel');
      expect(channelAxis).toBe(-1);
      const { channels, rdefs } = attrs.omero;
      expect(channels).toHaveLength(1);
      const [channel] = channels;
      // parseOmeroMeta(): visibilities from c.active (undefined hides the layer), colors through utils.ts hexToRGB(), limits [window.start, window.end].
      expect(channel.active).toBe(true);
      expect(channel.color).toMatch(/^[0-9A-Fa-f]{6}$/);
      const rgb = [0, 2, 4].map((i) => parseInt(channel.color.slice(i, i + 2), 16));
      for (const v of rgb) expect(v).toBeGreaterThanOrEqual(0);
      expect(Number.isFinite(channel.window.start) && Number.isFinite(channel.window.end)).toBe(true);
      expect(channel.window.end).toBeGreaterThan(channel.window.start);
      expect(typeof channel.label).toBe('string');
      // parseOmeroMeta() (older vizarr reads rdefs.defaultT without '?.'): rdefs present; defaultSelection z = rdefs.defaultZ.
      expect(rdefs).toBeDefined();
      expect(rdefs.defaultT).toBe(0);
      // utils.ts loadMultiscales(): every dataset path opens as an array relative to the group.
      const arrays = await Promise.all(multiscale.datasets.map((d: Json) => zarr.open(group.resolve(d.path), { kind: 'array' })));
      // utils.ts coordinateTransformationsToMatrix() (model matrix, from datasets[0]): scale/translation as long as axes, else it throws.
      for (const t of multiscale.datasets[0].coordinateTransformations) {
        if (t.type === 'scale') expect(t.scale).toHaveLength(rank);
        if (t.type === 'translation') expect(t.translation).toHaveLength(rank);
      }
      const plane = defaultPlane(attrs, rank);
      // utils.ts guessTileSize() on level 0; MultiscaleImageLayer uses that tile size at every level.
      const tileSize = 2 ** Math.floor(Math.log2(Math.min(...arrays[0].chunks.slice(-2))));
      for (let k = 0; k < arrays.length; k++) {
        const arr = arrays[k];
        // ZarrPixelSource.ts constructor: numeric dtype, capitalised into viv's DTYPE_VALUES (Uint16, Float32).
        expect(arr.is('number')).toBe(true);
        expect(arr.dtype).toBe(o.dtype);
        expect(arr.shape).toHaveLength(rank);
        expect(arr.chunks.slice(-2)).toEqual(arrays[0].chunks.slice(-2));
        if (k > 0) {
          // viv MultiscaleImageLayer: level k is level k-1 halved in y and x (vizarr issue #101)...
          const [py, px] = arrays[k - 1].shape.slice(-2);
          expect(arr.shape.slice(-2)).toEqual([Math.ceil(py / 2), Math.ceil(px / 2)]);
          // ...and every other axis has the level-0 size: the same z index goes to every level (viv issue #901).
          expect(arr.shape.slice(0, -2)).toEqual(arrays[0].shape.slice(0, -2));
        }
        // viv isInterleaved(): a last axis of 3 or 4 would be read as RGB(A).
        expect([3, 4]).not.toContain(arr.shape[rank - 1]);
        if (rank === 3) expect(plane).toBeLessThan(arr.shape[0]);
        // ZarrPixelSource.ts getTile(): zarr.get(arr, selection with y and x slices of one tile); data shape [height, width].
        const [height, width] = arr.shape.slice(-2);
        const [y1, x1] = [Math.min(height, tileSize), Math.min(width, 2 * tileSize)];
        const x0 = Math.min(tileSize, width - 1);
        const selection: (number | zarr.Slice)[] = [zarr.slice(0, y1), zarr.slice(x0, x1)];
        if (rank === 3) selection.unshift(plane);
        const got = await zarr.get(arr, selection);
        expect(got.shape).toEqual([y1, x1 - x0]);
        const ours = await readLevel(o, multiscale.datasets[k].path);
        expect(Array.from(got.data as ArrayLike<number>)).toEqual(region(ours.values, ours.shape, plane, 0, y1, x0, x1));
      }
    });

    it("ome-zarr-py's reader and napari-ome-zarr: every check they make holds on the stored documents", async () => {
      const o = output();
      const root = path.join(dir, o.name);
      const { ome, group } = await omeAttributes(o);
      // ome_zarr/io.py ZarrLocation.__init_metadata: the group opens; for Zarr v3 the 'ome' attribute is unwrapped.
      if (o.version === '0.5') {
        expect(group.zarr_format).toBe(3);
        expect(group.node_type).toBe('group');
        // ome_zarr/utils.py _get_version + classes/image.py from_ome_zarr: version '0.5' (exact string) at attributes.ome.version.
        expect(ome.version).toBe('0.5');
      } else {
        expect(group).toEqual({ zarr_format: 2 });
        // ome_zarr/format.py detect_format / _get_metadata_version / format_from_version: multiscales[0].version, exact string.
        expect(ome.multiscales[0].version).toBe('0.4');
      }
      // ome_zarr/reader.py Multiscales.matches: non-empty attributes with 'multiscales'.
      expect(Array.isArray(ome.multiscales) && ome.multiscales.length >= 1).toBe(true);
      const multiscale = ome.multiscales[0];
      const axes: Json[] = multiscale.axes;
      const rank = axes.length;
      // napari_ome_zarr/ome_zarr_reader.py Multiscales.metadata: axis["type"] of every axis (KeyError otherwise).
      for (const a of axes) expect(typeof a.type, a.name).toBe('string');
      // ome_zarr/axes.py Axes._validate_axes_types (0.4+): at most one type outside space/time/channel, time first only,
      // one channel at most, channel before space.
      const types = axes.map((a) => a.type);
      expect(types.filter((t) => !['space', 'time', 'channel'].includes(t)).length).toBeLessThanOrEqual(1);
      if (types.includes('time')) expect(types.lastIndexOf('time')).toBe(0);
      expect(types.filter((t) => t === 'channel').length).toBeLessThanOrEqual(1);
      if (types.includes('channel')) expect(types.lastIndexOf('channel')).toBeLessThan(types.indexOf('space'));
      // ome-zarr-models common/multiscales.py MultiscaleBase (ome-zarr-py's classes/image.py validates with it):
      // 2-5 axes, 2-3 space axes and last, unique names.
      expect(rank).toBeGreaterThanOrEqual(2);
      expect(rank).toBeLessThanOrEqual(5);
      const spaces = types.filter((t) => t === 'space').length;
      expect(spaces === 2 || spaces === 3).toBe(true);
      expect(types.slice(-spaces).every((t) => t === 'space')).toBe(true);
      expect(new Set(axes.map((a) => a.name)).size).toBe(rank);
      // ome_zarr/format.py FormatV04.validate_coordinate_transformations / validate_transformation_per_level:
      // one list per dataset; every entry typed; exactly one scale, first; scale and translation numbers, ndim long; at most one translation.
      const datasets: Json[] = multiscale.datasets;
      for (const d of datasets) {
        const transforms: Json[] = d.coordinateTransformations;
        expect(Array.isArray(transforms)).toBe(true);
        const kinds = transforms.map((t) => t.type);
        expect(kinds.every((k) => typeof k === 'string')).toBe(true);
        expect(kinds.filter((k) => k === 'scale')).toHaveLength(1);
        expect(kinds[0]).toBe('scale');
        expect(transforms[0].scale).toHaveLength(rank);
        // napari's layer scale (napari_ome_zarr _reader transform_scale, from datasets[0]) must be non-zero; ome-zarr-models wants > 0 by order.
        for (const s of transforms[0].scale) expect(typeof s === 'number' && s > 0).toBe(true);
        expect(kinds.filter((k) => k === 'translation').length).toBeLessThanOrEqual(1);
        const translation = transforms.find((t) => t.type === 'translation');
        if (translation) {
          // ome-zarr-models common/multiscales.py _ensure_scale_translation: the translation, if any, is second.
          expect(kinds[1]).toBe('translation');
          expect(translation.translation).toHaveLength(rank);
          for (const v of translation.translation) expect(typeof v === 'number' && Number.isFinite(v)).toBe(true);
        }
      }
      // ome-zarr-models common/multiscales.py _ensure_ordered_scales: scales do not decrease from level to level.
      for (let k = 1; k < datasets.length; k++) {
        const [before, after] = [datasets[k - 1].coordinateTransformations[0].scale, datasets[k].coordinateTransformations[0].scale];
        for (let a = 0; a < rank; a++) expect(after[a]).toBeGreaterThanOrEqual(before[a]);
      }
      // ome_zarr/reader.py Multiscales.__init__ -> da.from_zarr(path) (zarr-python); ome-zarr-models v05/image.py
      // Image._check_arrays_compatible (v04/image.py likewise): each path is an array with one dimension per axis;
      // v0.5: dimension_names equal to the axis names.
      for (const d of datasets) {
        if (o.version === '0.5') {
          const meta = await readJson(path.join(root, d.path, 'zarr.json'));
          expect(meta.zarr_format).toBe(3);
          expect(meta.node_type).toBe('array');
          expect(meta.shape).toHaveLength(rank);
          expect(meta.dimension_names).toEqual(axes.map((a) => a.name));
          expect(meta.data_type).toBe(o.dtype);
          expect(meta.chunk_grid.name).toBe('regular');
          expect(meta.chunk_key_encoding).toEqual({ name: 'default', configuration: { separator: '/' } });
          // Codecs zarr-python 3 ships: bytes (little endian) then zstd.
          expect(meta.codecs.map((c: Json) => c.name)).toEqual(['bytes', 'zstd']);
          expect(meta.codecs[0].configuration.endian).toBe('little');
          expect(typeof meta.fill_value).toBe('number');
        } else {
          const meta = await readJson(path.join(root, d.path, '.zarray'));
          expect(meta.zarr_format).toBe(2);
          expect(meta.shape).toHaveLength(rank);
          expect(meta.chunks).toHaveLength(rank);
          expect(meta.dtype).toBe(o.dtype === 'uint16' ? '<u2' : '<f4');
          // ome_zarr/format.py FormatV02+ nested layout; numcodecs knows the compressor id.
          expect(meta.dimension_separator).toBe('/');
          expect(meta.order).toBe('C');
          expect(meta.filters).toBeNull();
          expect(meta.compressor.id).toBe('zstd');
          // ome-zarr-models v04/image.py _check_array_path: an array there, not a group.
          await expect(fs.stat(path.join(root, d.path, '.zgroup'))).rejects.toThrow();
        }
      }
      // ome_zarr/reader.py OMERO + napari_ome_zarr ome_zarr_reader.py Multiscales.metadata / _extract_channel_props:
      // color -> int(color[i:i+2], 16) for i in 0, 2, 4; label; active; window start/end -> contrast_limits;
      // with no channel axis napari takes channel [0]. ome-zarr-models v04/omero.py: color str, window {min, max, start, end} numbers.
      const channels: Json[] = ome.omero.channels;
      expect(channels.length).toBeGreaterThanOrEqual(1);
      for (const c of channels) {
        expect(c.color).toMatch(/^[0-9A-Fa-f]{6}$/);
        expect(typeof c.active).toBe('boolean');
        expect(typeof c.label).toBe('string');
        for (const key of ['min', 'max', 'start', 'end']) expect(Number.isFinite(c.window[key]), key).toBe(true);
        // napari Image layer: contrast limits must increase (napari PR #5036).
        expect(c.window.end).toBeGreaterThan(c.window.start);
      }
      expect(ome.omero.rdefs.model).toBe('greyscale');
    });
  });
});

describe('streamed denoise output', () => {
  it('keeps its provenance beside the OME metadata (v0.5: outside attributes.ome), a key no viewer reads', async () => {
    for (const version of ['0.5', '0.4'] as const) {
      const o = outputs.find((x) => x.name === `denoised-v${version}.zarr`)!;
      const root = path.join(dir, o.name);
      const { ome } = await omeAttributes(o);
      const provenance = version === '0.5' ? (await readJson(path.join(root, 'zarr.json'))).attributes.blindspot : ome.blindspot;
      expect(provenance.software).toBe('blindspot');
      expect(provenance.model.method).toBe('n2v');
      if (version === '0.5') expect(ome.blindspot).toBeUndefined();
      // The input's placement is carried to the output level 0 (what vizarr's model matrix and napari's scale use).
      expect(ome.multiscales[0].datasets[0].coordinateTransformations).toEqual([{ type: 'scale', scale: [0.3, 0.3] }, { type: 'translation', translation: [2, 2] }]);
    }
  });
});
