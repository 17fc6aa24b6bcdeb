import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';
import { lastValueFrom, of, tap } from 'rxjs';
import { maxTensorBytes } from '../backend/select.js';
import { InputError, UsageError } from '../core/errors.js';
import type { Shape } from '../core/volume.js';
import { reflectIndex, voxelCount } from '../core/volume.js';
import { predictTiles } from '../operators/predictTiles.js';
import { isInferenceEngine } from '../engines/engine.js';
import type { Predictor } from '../engines/tfjs.js';
import { type OutputBlock, stitchWithBlending } from '../operators/stitchWithBlending.js';
import {
  DEFAULT_MAX_TILE_VOXELS,
  type TilePlan,
  type TileSpec,
  type TilingOptions,
  planTileGrid,
  tileGrid,
} from '../operators/tileGrid.js';

export type { TilePlan, TileSpec } from '../operators/tileGrid.js';

export interface PredictOptions extends TilingOptions {
  /** Average the 8 in-plane flips/rotations (YX only in 3D). */
  tta?: boolean;
  /** Tiles per model call (default 1). */
  batchSize?: number;
  onProgress?: (done: number, total: number) => void;
  /**
   * The tfjs network `model` wraps, when `model` is a function around it (a posterior, a sampler):
   * what tiles are sized by and the device check measures. A function alone cannot be measured and
   * is assumed at 4 KiB per voxel, which on webgpu (128 MiB buffers on llvmpipe) capped 3D tiles at
   * 32^3 voxels: for a wide-halo network (3D D-BSN, 14 voxels) mostly halo, hundreds of passes.
   */
  tfjsModel?: Predictor;
}

/** Memory one padded tile (times batchSize) may use when maxTileVoxels is not given. */
export const TILE_BUDGET_BYTES = 1024 * 2 ** 20;

/**
 * How far past the budget a tile may go (4 GiB: wasm's whole heap): where the smallest exact tile
 * needs it (else prediction refuses), or where the halo dominates and a larger tile cuts the work
 * (TilingOptions.maxTileOverrun). The budget is an upper bound (every activation alive at once).
 */
export const TILE_OVERRUN_FACTOR = 4;

/**
 * Plans the tiles of an image. Without a model to measure, maxTileVoxels defaults to
 * DEFAULT_MAX_TILE_VOXELS; pass `maxTileVoxelsFor(model, ...)` to get the plan predictVolume uses.
 */
export function planTiles(shape: Shape, opts: PredictOptions): TilePlan {
  return planTileGrid(shape, { ...opts, maxTileOverrun: opts.maxTileOverrun ?? TILE_OVERRUN_FACTOR });
}

/**
 * Bytes of activations per input voxel for one forward pass of `model`, an upper bound:
 * the sum over every layer's output of (channels x its voxels per input voxel) x 4 bytes (float32),
 * as if every activation were alive at once. tfjs-layers' predict frees each activation once its
 * last consumer has run, so the real peak is lower (for a U-Net, mostly the skip connections plus
 * the layer being computed); that slack covers kernel temporaries (padding copies, XNNPACK
 * buffers), so no extra factor is applied. The voxels per input voxel of each layer (1/2^dims per
 * pooling level) are measured by running the model once on a small input of 2 pooling cells per
 * axis. Measured with it: default (32-filter, depth-2) U-Nets 2.2-3.0 KiB per voxel (2D n2v 2984 B,
 * 3D n2v 2416 B); the cpu backend's actual peak for the 2D one is 881 B. The blind-spot
 * architectures need more: laine19 2D 12.4 KiB (depth 3, 16 filters) to 37 KiB (the paper's depth 5,
 * 48 filters), 3D 16.7 KiB; D-BSN 2D 7.2 KiB (32 filters, 5 blocks). Plain functions and
 * engines cannot be introspected: they get the default, a round 4 KiB per voxel (callers with the
 * tfjs model at hand measure it instead, whatever engine runs it).
 */
export function estimateBytesPerVoxel(model: Predictor, dims: 2 | 3, sizeMultiple: number): number {
  return probeActivations(model, dims, sizeMultiple)?.totalBytesPerVoxel ?? TILE_BUDGET_BYTES / DEFAULT_MAX_TILE_VOXELS;
}

/**
 * Bytes per input voxel of the largest single activation of `model` (its widest layer output at
 * full resolution, e.g. a U-Net's first skip concatenation): what one tensor of a batch of tiles
 * needs, to check against a device's largest buffer. Plain functions and engines: 4 KiB per voxel.
 */
export function estimateLargestTensorBytesPerVoxel(model: Predictor, dims: 2 | 3, sizeMultiple: number): number {
  return probeActivations(model, dims, sizeMultiple)?.largestBytesPerVoxel ?? TILE_BUDGET_BYTES / DEFAULT_MAX_TILE_VOXELS;
}

/** Every layer output's floats per input voxel, summed and the largest; null if the model cannot be probed (functions, engines). */
function probeActivations(model: Predictor, dims: 2 | 3, sizeMultiple: number): { totalBytesPerVoxel: number; largestBytesPerVoxel: number } | null {
  if (typeof model === 'function' || isInferenceEngine(model)) return null;
  try {
    // Every node's outputs, not layer.output: a layer shared by several branches (laine19's rotated
    // branches) has one output per call, and each is a separate activation.
    const seen = new Set<number>();
    const layerOutputs: tfl.SymbolicTensor[] = [];
    for (const layer of model.layers) {
      for (const node of (layer as unknown as { inboundNodes: { outputTensors: tfl.SymbolicTensor[] }[] }).inboundNodes) {
        for (const t of node.outputTensors) {
          if (!seen.has(t.id)) {
            seen.add(t.id);
            layerOutputs.push(t);
          }
        }
      }
    }
    const probe = tfl.model({ inputs: model.inputs, outputs: layerOutputs });
    const side = 2 * sizeMultiple;
    const inputVoxels = side ** dims;
    return tf.tidy(() => {
      const x = tf.zeros([1, ...new Array<number>(dims).fill(side), 1]);
      const outputs = probe.predict(x);
      const floats = (Array.isArray(outputs) ? outputs : [outputs]).map((t) => t.size / inputVoxels);
      return { totalBytesPerVoxel: 4 * floats.reduce((sum, f) => sum + f, 0), largestBytesPerVoxel: 4 * Math.max(...floats) };
    });
  } catch {
    // A model that cannot be probed (e.g. nested models): the default.
    return null;
  }
}

/**
 * Voxels a tile may have so that `batchSize` of them fit the active device's largest tensor
 * (backend/select.ts maxTensorBytes: a GPU's storage-buffer binding limit), or Infinity where the
 * backend has no such bound. An engine (ONNX Runtime) does not run on the tfjs backend: its limit
 * does not bind it.
 */
export function deviceTileVoxelCap(model: Predictor, dims: 2 | 3, sizeMultiple: number, batchSize = 1): number {
  const limit = isInferenceEngine(model) ? null : maxTensorBytes();
  if (limit === null) return Number.POSITIVE_INFINITY;
  return Math.max(1, Math.floor(limit / batchSize / estimateLargestTensorBytesPerVoxel(model, dims, sizeMultiple)));
}

/**
 * Throws a UsageError when `batchSize` tiles (or training patches) of `tileShape` would need a
 * tensor larger than the device holds; `remedy` says what to change (e.g. "use a smaller --patch").
 */
export function assertTileFitsDevice(model: Predictor, sizeMultiple: number, tileShape: readonly number[], batchSize: number, remedy: string): void {
  const limit = isInferenceEngine(model) ? null : maxTensorBytes();
  if (limit === null) return;
  const dims = tileShape.length as 2 | 3;
  const bytes = voxelCount(tileShape as Shape) * batchSize * estimateLargestTensorBytesPerVoxel(model, dims, sizeMultiple);
  if (bytes > limit) {
    const mib = (b: number): string => `${(b / 2 ** 20).toFixed(0)} MiB`;
    throw new UsageError(
      `${batchSize} x [${tileShape.join(', ')}] voxels need a ${mib(bytes)} tensor in this network's widest layer, ` +
        `more than the device's largest buffer (${mib(limit)}); ${remedy}`,
    );
  }
}

/** The default tile bound for `model`: TILE_BUDGET_BYTES for `batchSize` padded tiles at the estimated bytes per voxel. */
export function maxTileVoxelsFor(model: Predictor, dims: 2 | 3, sizeMultiple: number, batchSize = 1): number {
  return Math.max(1, Math.floor(TILE_BUDGET_BYTES / batchSize / estimateBytesPerVoxel(model, dims, sizeMultiple)));
}

/** Reader for an in-memory image: any region of its virtual reflection ('reflect', edge not repeated). */
export function reflectedRegionReader(data: Float32Array, shape: Shape): (spec: TileSpec) => Float32Array {
  return (spec) => readReflected(data, shape, spec.read.origin, spec.read.shape);
}

function readReflected(data: Float32Array, shape: Shape, origin: readonly number[], extent: readonly number[]): Float32Array {
  const shape3 = shape.length === 2 ? [1, ...shape] : [...shape];
  const origin3 = origin.length === 2 ? [0, ...origin] : [...origin];
  const extent3 = extent.length === 2 ? [1, ...extent] : [...extent];
  const indices = extent3.map((e, axis) => Int32Array.from({ length: e }, (_, i) => reflectIndex(origin3[axis] + i, shape3[axis])));
  const [zs, ys, xs] = indices;
  const out = new Float32Array(extent3[0] * extent3[1] * extent3[2]);
  let o = 0;
  for (let z = 0; z < zs.length; z++) {
    for (let y = 0; y < ys.length; y++) {
      const row = (zs[z] * shape3[1] + ys[y]) * shape3[2];
      for (let x = 0; x < xs.length; x++) out[o++] = data[row + xs[x]];
    }
  }
  return out;
}

function writeBlock(out: Float32Array, shape: Shape, block: OutputBlock): void {
  const shape3 = shape.length === 2 ? [1, ...shape] : [...shape];
  const origin = block.region.origin.length === 2 ? [0, ...block.region.origin] : [...block.region.origin];
  const extent = block.region.shape.length === 2 ? [1, ...block.region.shape] : [...block.region.shape];
  for (let z = 0; z < extent[0]; z++) {
    for (let y = 0; y < extent[1]; y++) {
      const src = (z * extent[1] + y) * extent[2];
      const dst = ((origin[0] + z) * shape3[1] + origin[1] + y) * shape3[2] + origin[2];
      out.set(block.data.subarray(src, src + extent[2]), dst);
    }
  }
}

/**
 * Predicts a whole image or volume (normalised float32, shape [Y,X] or [Z,Y,X]) with `model`: an
 * inference engine (engines/), or a tfjs LayersModel (run in inference mode) or any function on
 * NHWC/NDHWC, run through the tfjs engine. The whole image in one
 * call when its padded form fits maxTileVoxels, else overlapping tiles blended; either way the
 * result is the model applied to the reflect-padded image (see operators/tileGrid.ts). Returns
 * float32 of the same shape.
 */
export async function predictVolume(model: Predictor, data: Float32Array, shape: Shape, opts: PredictOptions): Promise<Float32Array> {
  if (shape.length !== 2 && shape.length !== 3) throw new InputError('<in-memory image>', `shape must be [Y, X] or [Z, Y, X], got [${(shape as readonly number[]).join(', ')}]`);
  if (data.length !== voxelCount(shape)) {
    throw new InputError('<in-memory image>', `has ${data.length} values but shape [${shape.join(', ')}] needs ${voxelCount(shape)}`);
  }
  const batchSize = opts.batchSize ?? 1;
  if (!Number.isInteger(batchSize) || batchSize < 1) throw new UsageError(`batchSize must be a positive integer, got ${batchSize}`);
  const dims = shape.length;
  // A GPU binds each tensor as one buffer: tiles stay under its limit too (Infinity elsewhere).
  // An engine is measured as itself (ONNX Runtime does not run on the tfjs backend's device); the
  // tfjs engine runs the tfjs model on that device, so the model's own activations bound its tiles.
  const measured = isInferenceEngine(model) && !(model.name === 'tfjs' && opts.tfjsModel) ? model : (opts.tfjsModel ?? model);
  const deviceCap = deviceTileVoxelCap(measured, dims, opts.sizeMultiple, batchSize);
  const maxTileVoxels = Math.min(opts.maxTileVoxels ?? maxTileVoxelsFor(measured, dims, opts.sizeMultiple, batchSize), deviceCap);
  const overrun = Math.max(1, Math.min(opts.maxTileOverrun ?? TILE_OVERRUN_FACTOR, deviceCap / maxTileVoxels));
  const tiling: TilingOptions = { ...opts, maxTileVoxels, maxTileOverrun: overrun };
  const plan = planTiles(shape, tiling);
  assertTileFitsDevice(measured, opts.sizeMultiple, plan.readShape, batchSize, `train a shallower network (--depth) or predict with a smaller batch`);
  // The smallest exact tile is the receptive field: a deep blind-spot network in 3D can need more
  // than any heap holds (wasm's is 4 GiB). Say so before allocating, instead of aborting inside it.
  if (plan.tileVoxels > TILE_OVERRUN_FACTOR * maxTileVoxels) {
    const gib = (plan.tileVoxels / maxTileVoxels) * (TILE_BUDGET_BYTES / 2 ** 30) * batchSize;
    throw new UsageError(
      `this network's receptive radius (${opts.receptiveRadius} voxels) needs tiles of [${plan.readShape.join(', ')}] voxels, ` +
        `about ${gib.toFixed(1)} GiB of activations, more than ${TILE_OVERRUN_FACTOR}x the ${TILE_BUDGET_BYTES / 2 ** 30} GiB tile budget; ` +
        `train a shallower network (--depth) for ${dims}D images`,
    );
  }
  const out = new Float32Array(data.length);
  let done = 0;
  await lastValueFrom(
    of({ shape }).pipe(
      tileGrid(tiling),
      predictTiles({ model, readRegion: reflectedRegionReader(data, shape), batchSize, tta: opts.tta }),
      tap(() => opts.onProgress?.(++done, plan.tileCount)),
      stitchWithBlending(),
      tap((block) => writeBlock(out, shape, block)),
    ),
    { defaultValue: undefined },
  );
  return out;
}
