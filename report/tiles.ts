/**
 * Before/after tiles for the report: a few full-resolution crops chosen by the tool (the brightest,
 * the most textured, a background one) from seeded candidate positions, each as 8-bit PNGs of the
 * noisy input, the denoised output, the residual (noisy - denoised) and, for posterior models, the
 * uncertainty, one PNG per z slice. Candidates are read as regions, so a terabyte OME-Zarr costs a
 * few dozen small reads, never a full pass.
 */
import sharp from 'sharp';
import { Rng } from '../core/rng.js';
import type { Volume } from '../core/volume.js';
import { ChunkCache, readRegionReflected } from '../storage/chunkCache.js';
import type { ChunkedArrayReader } from '../storage/chunked.js';
import type { Tile, TileImage } from './types.js';

/** Voxels of a YX or ZYX array by region. */
export interface RegionSource {
  shape: readonly number[];
  /** How many candidate tiles to score (reads of this source). */
  candidates: number;
  read(origin: readonly number[], shape: readonly number[]): Promise<Float32Array>;
}

/** Largest tile side (YX) and z depth: 3 tiles x 3 panels x 16 slices of 128^2 PNGs stay near 2-3 MB. */
const MAX_SIDE = 128;
const MAX_DEPTH = 16;
/** Candidate positions scored: all in memory; fewer for a chunked array, each costing a read of the chunks under it. */
const CANDIDATES = 48;
const CHUNKED_CANDIDATES = 12;

export function volumeRegions(volume: Volume): RegionSource {
  const shape = volume.shape as readonly number[];
  return {
    shape,
    candidates: CANDIDATES,
    read: async (origin, size) => cropVolume(volume.data, shape, origin, size),
  };
}

/** A chunked array read through a small cache (the tiles overlap few chunks). */
export function chunkedRegions(reader: ChunkedArrayReader, cacheBytes = 256 * 2 ** 20): RegionSource {
  const cache = new ChunkCache(cacheBytes);
  return { shape: reader.info.shape, candidates: CHUNKED_CANDIDATES, read: (origin, size) => readRegionReflected(reader, cache, origin, size) };
}

function cropVolume(data: Float32Array, shape: readonly number[], origin: readonly number[], size: readonly number[]): Float32Array {
  const [nz, ny, nx] = shape.length === 3 ? shape : [1, ...shape];
  const [oz, oy, ox] = origin.length === 3 ? origin : [0, ...origin];
  const [sz, sy, sx] = size.length === 3 ? size : [1, ...size];
  const out = new Float32Array(sz * sy * sx);
  for (let z = 0; z < sz; z++) {
    for (let y = 0; y < sy; y++) {
      const from = ((oz + z) * ny + oy + y) * nx + ox;
      if (oz + z >= nz || oy + y >= ny) throw new RangeError('tile outside the volume');
      out.set(data.subarray(from, from + sx), (z * sy + y) * sx);
    }
  }
  return out;
}

/** Tile shape for an image: up to 128 pixels a side (half the image's smaller side if that is less, at least 32), up to 16 slices. */
export function tileShapeFor(shape: readonly number[]): number[] {
  const yx = shape.slice(-2);
  const side = Math.min(MAX_SIDE, Math.max(Math.min(32, ...yx), Math.floor(Math.min(...yx) / 2)));
  const plane = yx.map((n) => Math.min(n, side));
  return shape.length === 3 ? [Math.min(shape[0], MAX_DEPTH), ...plane] : plane;
}

interface Candidate {
  origin: number[];
  mean: number;
  /** Mean absolute difference of neighbouring pixels in the plane: edges and structure, not noise (scored on the denoised output). */
  texture: number;
}

function overlaps(a: readonly number[], b: readonly number[], size: readonly number[]): boolean {
  return a.every((o, axis) => Math.abs(o - b[axis]) < size[axis]);
}

/** The tiles to show: brightest, most textured, background (lowest mean), not overlapping where the image allows; seeded. */
export async function chooseTiles(denoised: RegionSource, seed: number): Promise<Array<{ origin: number[]; label: string; reason: string }>> {
  const shape = denoised.shape;
  const size = tileShapeFor(shape);
  const rng = new Rng(seed);
  const seen = new Set<string>();
  const candidates: Candidate[] = [];
  for (let i = 0; i < denoised.candidates; i++) {
    const origin = shape.map((n, axis) => rng.int(n - size[axis] + 1));
    const key = origin.join(',');
    if (seen.has(key)) continue;
    seen.add(key);
    const values = await denoised.read(origin, size);
    candidates.push({ origin, ...scoreTile(values, size) });
  }
  const chosen: Array<{ origin: number[]; label: string; reason: string }> = [];
  const pick = (score: (c: Candidate) => number, label: string, reason: (c: Candidate) => string): void => {
    const ordered = [...candidates].sort((a, b) => score(b) - score(a));
    const free = ordered.find((c) => chosen.every((t) => !overlaps(t.origin, c.origin, size)));
    const c = free ?? ordered.find((o) => chosen.every((t) => t.origin.join() !== o.origin.join()));
    if (c) chosen.push({ origin: c.origin, label, reason: reason(c) });
  };
  const f = (v: number): string => v.toPrecision(4);
  pick((c) => c.mean, 'brightest', (c) => `highest mean of ${candidates.length} seeded candidates (denoised mean ${f(c.mean)})`);
  pick((c) => c.texture, 'most textured', (c) => `largest mean neighbour difference of the denoised output (${f(c.texture)})`);
  pick((c) => -c.mean, 'background', (c) => `lowest mean (denoised mean ${f(c.mean)})`);
  return chosen;
}

function scoreTile(values: Float32Array, size: readonly number[]): { mean: number; texture: number } {
  const [sy, sx] = size.slice(-2);
  const planes = values.length / (sy * sx);
  let sum = 0;
  let diff = 0;
  let pairs = 0;
  for (let z = 0; z < planes; z++) {
    for (let y = 0; y < sy; y++) {
      for (let x = 0; x < sx; x++) {
        const i = (z * sy + y) * sx + x;
        sum += values[i];
        if (x + 1 < sx) (diff += Math.abs(values[i + 1] - values[i])), pairs++;
        if (y + 1 < sy) (diff += Math.abs(values[i + sx] - values[i])), pairs++;
      }
    }
  }
  return { mean: sum / values.length, texture: pairs > 0 ? diff / pairs : 0 };
}

function quantile(values: Float32Array, q: number): number {
  const sorted = Float32Array.from(values).sort();
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.floor(q * (sorted.length - 1))))];
}

async function png(values: Float32Array, width: number, height: number, low: number, high: number): Promise<string> {
  const pixels = Buffer.alloc(width * height);
  const span = high > low ? high - low : 1;
  for (let i = 0; i < pixels.length; i++) pixels[i] = Math.round(255 * Math.min(1, Math.max(0, (values[i] - low) / span)));
  const bytes = await sharp(pixels, { raw: { width, height, channels: 1 } }).png({ compressionLevel: 9 }).toBuffer();
  return `data:image/png;base64,${bytes.toString('base64')}`;
}

/** PNG data URIs of the tiles of one image; `noisy` null: the input cannot be read (denoised only). */
export async function renderTiles(opts: {
  name: string;
  noisy: RegionSource | null;
  denoised: RegionSource;
  uncertainty?: RegionSource | null;
  seed?: number;
}): Promise<TileImage> {
  const { denoised } = opts;
  const shape = [...denoised.shape];
  const size = tileShapeFor(shape);
  const picks = await chooseTiles(denoised, opts.seed ?? 1);
  const read = async (source: RegionSource | null | undefined, origin: number[]): Promise<Float32Array | null> => (source ? source.read(origin, size) : null);
  const regions = await Promise.all(
    picks.map(async (p) => ({ ...p, noisy: await read(opts.noisy, p.origin), denoised: await read(denoised, p.origin), std: await read(opts.uncertainty, p.origin) })),
  );
  // One window for noisy and denoised of every tile of the image, from the denoised values (the noisy tails would wash it out).
  const allDenoised = concat(regions.map((r) => r.denoised!));
  const window: [number, number] = [quantile(allDenoised, 0.002), quantile(allDenoised, 0.998)];
  const residuals: Array<Float32Array | null> = regions.map((r) => (r.noisy ? r.noisy.map((v, i) => v - r.denoised![i]) : null));
  const allResiduals = concat(residuals.filter((r): r is Float32Array => r !== null));
  const residualRange = allResiduals.length > 0 ? 3 * Math.sqrt(allResiduals.reduce((s, v) => s + v * v, 0) / allResiduals.length) || 1 : 1;
  const allStd = concat(regions.map((r) => r.std).filter((r): r is Float32Array => r !== null));
  const uncertaintyRange = allStd.length > 0 ? quantile(allStd, 0.995) || 1 : undefined;
  const [sy, sx] = size.slice(-2);
  const depth = shape.length === 3 ? size[0] : 1;
  const slices = async (values: Float32Array, low: number, high: number): Promise<string[]> =>
    Promise.all(Array.from({ length: depth }, (_, z) => png(values.subarray(z * sy * sx, (z + 1) * sy * sx), sx, sy, low, high)));
  const tiles: Tile[] = [];
  for (const [k, r] of regions.entries()) {
    const residual = residuals[k];
    tiles.push({
      label: r.label,
      reason: r.reason,
      origin: r.origin,
      shape: size,
      z: shape.length === 3 ? Array.from({ length: depth }, (_, z) => r.origin[0] + z) : [],
      noisy: r.noisy ? await slices(r.noisy, window[0], window[1]) : [],
      denoised: await slices(r.denoised!, window[0], window[1]),
      residual: residual ? await slices(residual, -residualRange, residualRange) : [],
      ...(r.std && uncertaintyRange !== undefined ? { uncertainty: await slices(r.std, 0, uncertaintyRange) } : {}),
    });
  }
  return { name: opts.name, shape, window, residualRange, ...(uncertaintyRange !== undefined ? { uncertaintyRange } : {}), tiles };
}

function concat(arrays: Float32Array[]): Float32Array {
  const out = new Float32Array(arrays.reduce((n, a) => n + a.length, 0));
  let at = 0;
  for (const a of arrays) (out.set(a, at), (at += a.length));
  return out;
}
