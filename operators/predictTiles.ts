import { type OperatorFunction, bufferCount, concatMap, mergeMap, pipe } from 'rxjs';
import { voxelCount } from '../core/volume.js';
import type { InferenceEngine } from '../engines/engine.js';
import { asEngine, type Predictor } from '../engines/tfjs.js';
import { predictDihedralMeanArray } from '../models/tta.js';
import type { TileSpec } from './tileGrid.js';

export { applyModel, type Predictor, type TileModel } from '../engines/tfjs.js';

/** Prediction of one tile, cropped to its kept region (C order, shape `spec.kept.shape`). */
export interface PredictedTile {
  readonly spec: TileSpec;
  readonly data: Float32Array;
}

export interface PredictTilesOptions {
  /** The inference engine (engines/), or a tfjs model run through the tfjs engine. */
  model: Predictor;
  /** Pixels of `spec.read` (YX or ZYX, C order, float32) from wherever the image lives; may be async. */
  readRegion: (spec: TileSpec) => Float32Array | Promise<Float32Array>;
  /** Tiles per model call (tiles of one plan all have the same shape); default 1. */
  batchSize?: number;
  /** Batches read and predicted at once (overlaps slow reads with compute); default 1. With more than 1, tiles may come out of order. */
  concurrency?: number;
  /** Average the 8 in-plane (YX) flips/rotations of every tile. */
  tta?: boolean;
}

/** A tile's padded read region, already read: pixels of `spec.read` (C order, float32). */
export interface TilePixels {
  readonly spec: TileSpec;
  readonly data: Float32Array;
}

export interface PredictTilePixelsOptions {
  /** The inference engine (engines/), or a tfjs model run through the tfjs engine. */
  model: Predictor;
  /** Tiles per model call, in arrival order (the caller fixes the order for reproducible batches); default 1. */
  batchSize?: number;
  /** Average the 8 in-plane (YX) flips/rotations of every tile. */
  tta?: boolean;
}

/**
 * Tile coordinates -> predictions of their kept regions. Reads each padded tile with `readRegion`,
 * runs the model on batches of tiles (optionally averaged over the 8 in-plane dihedral transforms),
 * drops the margin and emits one PredictedTile per TileSpec.
 */
export function predictTiles(opts: PredictTilesOptions): OperatorFunction<TileSpec, PredictedTile> {
  const batchSize = opts.batchSize ?? 1;
  const concurrency = opts.concurrency ?? 1;
  if (!Number.isInteger(batchSize) || batchSize < 1) throw new RangeError(`predictTiles: batchSize must be a positive integer, got ${batchSize}`);
  if (!Number.isInteger(concurrency) || concurrency < 1) throw new RangeError(`predictTiles: concurrency must be a positive integer, got ${concurrency}`);
  const engine = asEngine(opts.model);
  return pipe(
    bufferCount<TileSpec>(batchSize),
    // A buffer may mix plans (several images in one stream); a model call needs one tile shape.
    mergeMap((specs) => groupByReadShape(specs, (spec) => spec)),
    mergeMap((specs) => predictBatch(specs, opts, engine), concurrency),
    mergeMap((tiles) => tiles),
  );
}

/**
 * Tiles already read -> predictions of their kept regions: the model half of predictTiles, for
 * pipelines that read tiles in their own bounded operator (operators/readTiles.ts). Batches are
 * consecutive tiles in arrival order; one model call at a time (the backend runs one anyway), so a
 * slow consumer holds back the batches after it.
 */
export function predictTilePixels(opts: PredictTilePixelsOptions): OperatorFunction<TilePixels, PredictedTile> {
  const batchSize = opts.batchSize ?? 1;
  if (!Number.isInteger(batchSize) || batchSize < 1) throw new RangeError(`predictTilePixels: batchSize must be a positive integer, got ${batchSize}`);
  const engine = asEngine(opts.model);
  return pipe(
    bufferCount<TilePixels>(batchSize),
    mergeMap((tiles) => groupByReadShape(tiles, (t) => t.spec)),
    concatMap((tiles) => predictPixels(tiles.map((t) => t.spec), tiles.map((t) => t.data), engine, opts.tta === true)),
    mergeMap((tiles) => tiles),
  );
}

function groupByReadShape<T>(items: T[], specOf: (item: T) => TileSpec): T[][] {
  const groups = new Map<string, T[]>();
  for (const item of items) {
    const key = specOf(item).read.shape.join('x');
    const group = groups.get(key);
    if (group) group.push(item);
    else groups.set(key, [item]);
  }
  return [...groups.values()];
}

async function predictBatch(specs: TileSpec[], opts: PredictTilesOptions, engine: InferenceEngine): Promise<PredictedTile[]> {
  const pixels = await Promise.all(specs.map((spec) => opts.readRegion(spec)));
  return predictPixels(specs, pixels, engine, opts.tta === true);
}

async function predictPixels(specs: TileSpec[], pixels: Float32Array[], engine: InferenceEngine, tta: boolean): Promise<PredictedTile[]> {
  const readShape = specs[0].read.shape;
  const tileVoxels = voxelCount(readShape);
  pixels.forEach((tile) => {
    if (tile.length !== tileVoxels) {
      throw new Error(`predictTiles: readRegion returned ${tile.length} values for a [${readShape.join(', ')}] region`);
    }
  });
  // A batch of one is its tile (engines leave their input as it was): no copy.
  let batch = pixels[0];
  if (specs.length > 1) {
    batch = new Float32Array(specs.length * tileVoxels);
    pixels.forEach((tile, i) => batch.set(tile, i * tileVoxels));
  }
  const batchShape = [specs.length, ...readShape, 1];
  // TTA on typed arrays: the same 8 transforms for every engine (models/tta.ts). The tiles go with
  // the batch: a sampling denoiser seeds each tile from its position.
  const values = tta ? await predictDihedralMeanArray((b, s) => engine.predict(b, s, specs), batch, batchShape) : await engine.predict(batch, batchShape, specs);
  return specs.map((spec, i) => ({
    spec,
    data: cropKept(values.subarray(i * tileVoxels, (i + 1) * tileVoxels), spec),
  }));
}

/** Copies the kept region out of a predicted padded tile (the margin is dropped here). */
function cropKept(tile: Float32Array, spec: TileSpec): Float32Array {
  // Treat 2D as 3D with one plane.
  const pad3 = (v: readonly number[], fill: number): number[] => (v.length === 2 ? [fill, ...v] : [...v]);
  const [, ty, tx] = pad3(spec.read.shape, 1);
  const [oz, oy, ox] = pad3(spec.kept.origin.map((o, axis) => o - spec.read.origin[axis]), 0);
  const [kz, ky, kx] = pad3(spec.kept.shape, 1);
  const out = new Float32Array(kz * ky * kx);
  for (let z = 0; z < kz; z++) {
    for (let y = 0; y < ky; y++) {
      const from = ((z + oz) * ty + (y + oy)) * tx + ox;
      out.set(tile.subarray(from, from + kx), (z * ky + y) * kx);
    }
  }
  return out;
}
