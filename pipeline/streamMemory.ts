/**
 * The memory plan of a streaming denoise: from --max-memory, the volume, its chunks and the
 * network's geometry, the output chunk (tile core) shape, the chunk cache and the queue depths
 * that keep a run's resident memory under the budget (test/streamMemory.test.ts measures it).
 */
import * as tf from '@tensorflow/tfjs-core';
import { UsageError } from '../core/errors.js';
import { voxelCount } from '../core/volume.js';

/** Node, TensorFlow.js and its backend before any tile: measured RSS of a process that has loaded them (cpu ~110 MiB, wasm ~150 MiB) plus slack. */
export const RUNTIME_BYTES = 192 * 2 ** 20;

export const MiB = 2 ** 20;

/** Bytes from a size like '2GiB', '512MiB', '1.5G', '800M' or a plain number of bytes. */
export function parseByteSize(text: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$/i.exec(text);
  if (!match) throw new UsageError(`a memory size must look like 2GiB, 512MiB or 800M, got '${text}'`);
  const power = ' kmgt'.indexOf(match[2].toLowerCase() || ' ');
  return Math.floor(Number(match[1]) * 1024 ** power);
}

function roundUp(value: number, multiple: number): number {
  return Math.ceil(value / multiple) * multiple;
}

export interface StreamGeometry {
  /** Tile sizes and origins are multiples of this (2^depth). */
  sizeMultiple: number;
  /** Context per side a prediction depends on. */
  receptiveRadius: number;
}

/** How `maxMemoryBytes` is spent. All values in bytes unless named otherwise. */
export interface StreamMemoryPlan {
  maxMemoryBytes: number;
  /** Node + TensorFlow.js + backend (RUNTIME_BYTES). */
  runtimeBytes: number;
  /** Model weights, counted twice (the loaded copy and the backend's). */
  modelBytes: number;
  /** Output chunk = tile core, YX or ZYX voxels. */
  coreShape: number[];
  /** Padded tile fed to the model. */
  readShape: number[];
  /** One forward pass on one padded tile (estimated bytes per voxel x voxels; x2 with TTA for the 8 averaged passes' outputs). */
  activationBytes: number;
  /** Tiles allowed between the spec generator and a stored chunk. */
  tickets: number;
  readConcurrency: number;
  writeConcurrency: number;
  /** Buffers one ticket may hold: raw and normalised padded tile, prediction, block, chunk and its encoded bytes. */
  ticketBytes: number;
  /** Input chunk cache bound. */
  cacheBytes: number;
  /** Sum of everything above except the cache's share not needed: runtime + model + activations + tickets + cache. */
  totalBytes: number;
}

export interface PlanStreamOptions extends StreamGeometry {
  maxMemoryBytes: number;
  /** Image shape, YX or ZYX. */
  shape: readonly number[];
  /** Input chunk shape (for the cache's minimum: the chunks every in-flight tile touches). */
  inputChunks: readonly number[];
  bytesPerVoxel: number;
  modelWeightBytes: number;
  tta?: boolean;
  /** Fixed core (the output's chunks); chosen from the budget when absent. */
  coreShape?: readonly number[];
  readConcurrency?: number;
  writeConcurrency?: number;
  /** Cap on one forward pass (the wasm heap stops at 4 GiB); default: the active backend's (wasmActivationCap). */
  maxActivationBytes?: number;
}

/** The wasm backend's heap tops out at 4 GiB and never shrinks: keep one pass well inside it. */
export function activationCapForBackend(): number {
  return tf.getBackend() === 'wasm' ? 3 * 2 ** 30 : Infinity;
}

function memoryFor(core: readonly number[], o: PlanStreamOptions, halo: number): Omit<StreamMemoryPlan, 'cacheBytes' | 'totalBytes'> & { minCacheBytes: number } {
  const readConcurrency = o.readConcurrency ?? 4;
  const writeConcurrency = o.writeConcurrency ?? 4;
  const readShape = core.map((c) => c + 2 * halo);
  const readVoxels = voxelCount(readShape);
  const coreVoxels = voxelCount(core);
  const activationBytes = readVoxels * o.bytesPerVoxel * (o.tta ? 2 : 1);
  const tickets = readConcurrency + 1 + writeConcurrency;
  const ticketBytes = readVoxels * 4 * 2 + coreVoxels * 4 * 5;
  const touchedPerTile = readShape.reduce((n, r, axis) => n * (Math.min(Math.ceil(r / o.inputChunks[axis]) + 1, Math.ceil(o.shape[axis] / o.inputChunks[axis]))), 1);
  const minCacheBytes = (readConcurrency + 1) * touchedPerTile * voxelCount(o.inputChunks) * 4;
  return {
    maxMemoryBytes: o.maxMemoryBytes,
    runtimeBytes: RUNTIME_BYTES,
    modelBytes: 2 * o.modelWeightBytes,
    coreShape: [...core],
    readShape,
    activationBytes,
    tickets,
    readConcurrency,
    writeConcurrency,
    ticketBytes,
    minCacheBytes,
  };
}

/**
 * Splits `maxMemoryBytes`: runtime and model first; of the rest, the tile (activations plus every
 * ticket's buffers plus the cache's minimum) may take 60%, and the cache gets what is left, so
 * neighbouring tiles find most of their input chunks cached. Without a fixed core, the core shape
 * (= output chunk shape, a multiple of sizeMultiple) is the one computing the fewest voxels in all
 * (halo included) among those that fit. Throws a UsageError when nothing fits.
 */
export function planStreamMemory(o: PlanStreamOptions): StreamMemoryPlan {
  const m = o.sizeMultiple;
  const halo = roundUp(o.receptiveRadius, m);
  const available = o.maxMemoryBytes - RUNTIME_BYTES - 2 * o.modelWeightBytes;
  const tileShare = 0.6 * available;
  const cost = (core: readonly number[]): number => {
    const p = memoryFor(core, o, halo);
    return p.activationBytes + p.tickets * p.ticketBytes + p.minCacheBytes;
  };
  let core: number[];
  if (o.coreShape) {
    core = [...o.coreShape];
    if (core.some((c, axis) => c % m !== 0 && c < o.shape[axis])) {
      throw new UsageError(`output chunks [${core.join(', ')}] must be multiples of the network's pooling size ${m}`);
    }
  } else {
    const cap = o.maxActivationBytes ?? activationCapForBackend();
    core = chooseCoreShape(o.shape, m, halo, (c) => cost(c) <= tileShare && memoryFor(c, o, halo).activationBytes <= cap);
  }
  const need = cost(core);
  if (available <= 0 || need > available) {
    const floor = RUNTIME_BYTES + 2 * o.modelWeightBytes + need;
    throw new UsageError(
      `--max-memory ${(o.maxMemoryBytes / MiB).toFixed(0)} MiB is too small: the runtime, the model and one ` +
        `[${core.join('x')}] tile need about ${Math.ceil(floor / MiB)} MiB`,
    );
  }
  const p = memoryFor(core, o, halo);
  const rest = available - p.activationBytes - p.tickets * p.ticketBytes;
  const cacheBytes = Math.max(p.minCacheBytes, Math.floor(rest));
  const { minCacheBytes: _unused, ...plan } = p;
  void _unused;
  return { ...plan, cacheBytes, totalBytes: RUNTIME_BYTES + plan.modelBytes + plan.activationBytes + plan.tickets * plan.ticketBytes + cacheBytes };
}

/**
 * The core shape computing the fewest voxels (tiles x padded tile voxels) among multiples of
 * `sizeMultiple` for which `fits` holds; ties go to fewer tiles. Per axis at most 96 candidate
 * sizes are tried (evenly spread, plus the balanced sizes ceil(n/k) for small k).
 */
export function chooseCoreShape(shape: readonly number[], sizeMultiple: number, halo: number, fits: (core: number[]) => boolean): number[] {
  const m = sizeMultiple;
  const candidates = shape.map((n) => {
    const largest = roundUp(n, m);
    const steps = largest / m;
    const sizes = new Set<number>();
    const stride = Math.max(1, Math.ceil(steps / 64));
    for (let k = 1; k <= steps; k += stride) sizes.add(k * m);
    for (let k = 1; k <= 32; k++) sizes.add(Math.min(largest, roundUp(Math.ceil(n / k), m)));
    return [...sizes].sort((a, b) => a - b);
  });
  let best: { core: number[]; work: number; tiles: number } | null = null;
  const visit = (axis: number, chosen: number[]): void => {
    if (axis === shape.length) {
      if (!fits(chosen)) return;
      const tiles = chosen.reduce((t, c, a) => t * Math.ceil(shape[a] / c), 1);
      const work = tiles * chosen.reduce((v, c) => v * (c + 2 * halo), 1);
      if (best === null || work < best.work || (work === best.work && tiles < best.tiles)) best = { core: [...chosen], work, tiles };
      return;
    }
    for (const c of candidates[axis]) {
      const partial = [...chosen, c];
      // Sizes only grow along a candidate list: once the smallest completion does not fit, stop.
      if (!fits([...partial, ...candidates.slice(axis + 1).map((list) => list[0])])) break;
      visit(axis + 1, partial);
    }
  };
  visit(0, []);
  if (best === null) return shape.map(() => m);
  const chosen = (best as { core: number[] }).core;
  // Balance: same tile count, cores as even as the pooling grid allows.
  return chosen.map((c, axis) => roundUp(Math.ceil(shape[axis] / Math.ceil(shape[axis] / c)), m));
}
