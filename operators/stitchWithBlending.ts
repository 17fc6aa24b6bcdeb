import { Observable, type OperatorFunction } from 'rxjs';
import { voxelCount } from '../core/volume.js';
import type { PredictedTile } from './predictTiles.js';
import { type Region, type TilePlan, axisExtents, tileSpecAt } from './tileGrid.js';

/** One finished cell of the grid of tile cores: blended, normalised, C order. */
export interface OutputBlock {
  readonly plan: TilePlan;
  /** Grid index per axis (the index of the tile whose core this is). */
  readonly index: readonly number[];
  /** Where the block lies in the image (image coordinates). */
  readonly region: Region;
  readonly data: Float32Array;
}

/** What the stitcher holds, reported after each tile (for memory checks). */
export interface StitchStats {
  /** Blocks with a full accumulator allocated (their own tile has arrived, not yet emitted). */
  blocksHeld: number;
  /** Partial contributions waiting for their block's own tile (overlap strips only). */
  pendingContributions: number;
  /** Float32 values held in accumulators and pending strips (2 per voxel: sum w*pred and sum w). */
  heldValues: number;
}

export interface StitchWithBlendingOptions {
  onStats?: (stats: StitchStats) => void;
}

interface Contribution {
  region: Region;
  weightedSum: Float32Array;
  weightSum: Float32Array;
}

interface BlockState {
  readonly index: number[];
  readonly core: Region;
  /** Tiles whose kept region overlaps this core. */
  readonly expected: number;
  received: number;
  /** Allocated when the block's own tile arrives; earlier overlap strips wait in `pending`. */
  accumulator: Contribution | null;
  pending: Contribution[];
}

/**
 * Raised-cosine blending weight of tile `k` along `axis`, over its kept region: rises across the
 * overlap with tile k-1, falls across the overlap with tile k+1, 1 elsewhere and at the image
 * border. The rise of k and the fall of k-1 sum to 1 at every pixel, and no weight is 0
 * ((j + 0.5) / width is strictly inside (0, 1)).
 */
export function blendWindow(plan: TilePlan, axis: number, k: number): Float64Array {
  const { kept } = axisExtents(plan, axis, k);
  const width = plan.blendWidth[axis];
  const c = plan.coreShape[axis];
  const before = Math.floor(width / 2);
  const riseStart = k * c - before;
  const fallStart = (k + 1) * c - before;
  const window = new Float64Array(kept[1] - kept[0]);
  for (let p = kept[0]; p < kept[1]; p++) {
    let w = 1;
    if (k > 0 && p < riseStart + width) w *= 0.5 - 0.5 * Math.cos((Math.PI * (p - riseStart + 0.5)) / width);
    if (k < plan.grid[axis] - 1 && p >= fallStart) w *= 0.5 + 0.5 * Math.cos((Math.PI * (p - fallStart + 0.5)) / width);
    window[p - kept[0]] = w;
  }
  return window;
}

function intersect(a: Region, b: Region): Region | null {
  const origin: number[] = [];
  const shape: number[] = [];
  for (let axis = 0; axis < a.origin.length; axis++) {
    const start = Math.max(a.origin[axis], b.origin[axis]);
    const end = Math.min(a.origin[axis] + a.shape[axis], b.origin[axis] + b.shape[axis]);
    if (end <= start) return null;
    origin.push(start);
    shape.push(end - start);
  }
  return { origin, shape };
}

/** Number of tiles whose kept region overlaps core `index` (only immediate neighbours can: blend <= core). */
function expectedContributors(plan: TilePlan, index: readonly number[]): number {
  let count = 1;
  index.forEach((k, axis) => {
    const core = axisExtents(plan, axis, k).core;
    let onAxis = 0;
    for (let j = Math.max(0, k - 1); j <= Math.min(plan.grid[axis] - 1, k + 1); j++) {
      const kept = axisExtents(plan, axis, j).kept;
      if (kept[0] < core[1] && core[0] < kept[1]) onAxis++;
    }
    count *= onAxis;
  });
  return count;
}

/** Iterates a box as 3D (2D is one plane): calls visit(boxOffset, z, y, x) for every voxel in C order. */
function as3(v: readonly number[], fill: number): [number, number, number] {
  return (v.length === 2 ? [fill, v[0], v[1]] : [v[0], v[1], v[2]]) as [number, number, number];
}

/**
 * Adds a tile's weighted prediction over `region` (a sub-box of its kept region) into `target`
 * (a box covering `region`).
 */
function accumulate(tile: PredictedTile, windows: Float64Array[], region: Region, target: Contribution): void {
  const kept = tile.spec.kept;
  const windows3 = windows.length === 2 ? [new Float64Array([1]), ...windows] : windows;
  const [rz, ry, rx] = as3(region.shape, 1);
  const [kz0, ky0, kx0] = as3(region.origin.map((o, a) => o - kept.origin[a]), 0);
  const [, kyn, kxn] = as3(kept.shape, 1);
  const [tz0, ty0, tx0] = as3(region.origin.map((o, a) => o - target.region.origin[a]), 0);
  const [, tyn, txn] = as3(target.region.shape, 1);
  const [wz, wy, wx] = windows3;
  for (let z = 0; z < rz; z++) {
    const weightZ = wz[z + kz0];
    for (let y = 0; y < ry; y++) {
      const weightZY = weightZ * wy[y + ky0];
      const src = ((z + kz0) * kyn + (y + ky0)) * kxn + kx0;
      const dst = ((z + tz0) * tyn + (y + ty0)) * txn + tx0;
      for (let x = 0; x < rx; x++) {
        const w = weightZY * wx[x + kx0];
        target.weightedSum[dst + x] += w * tile.data[src + x];
        target.weightSum[dst + x] += w;
      }
    }
  }
}

/** Adds `part` (a sub-box) into `target`. */
function fold(part: Contribution, target: Contribution): void {
  const [rz, ry, rx] = as3(part.region.shape, 1);
  const [tz0, ty0, tx0] = as3(part.region.origin.map((o, a) => o - target.region.origin[a]), 0);
  const [, tyn, txn] = as3(target.region.shape, 1);
  for (let z = 0; z < rz; z++) {
    for (let y = 0; y < ry; y++) {
      const src = (z * ry + y) * rx;
      const dst = ((z + tz0) * tyn + (y + ty0)) * txn + tx0;
      for (let x = 0; x < rx; x++) {
        target.weightedSum[dst + x] += part.weightedSum[src + x];
        target.weightSum[dst + x] += part.weightSum[src + x];
      }
    }
  }
}

function emptyContribution(region: Region): Contribution {
  const n = voxelCount(region.shape);
  return { region, weightedSum: new Float32Array(n), weightSum: new Float32Array(n) };
}

/** Whether `tile` is its block's only contribution with weight 1: no blending, kept region = core. */
function unblended(tile: PredictedTile): boolean {
  const { plan, kept, core } = tile.spec;
  return plan.blendWidth.every((w) => w === 0) && kept.origin.every((o, axis) => o === core.origin[axis] && kept.shape[axis] === core.shape[axis]);
}

/**
 * Predicted tiles (any order) -> output blocks (the grid of tile cores), each emitted, normalised
 * (sum w*pred / sum w), as soon as every tile overlapping it has arrived, then freed.
 *
 * A block's full accumulator is allocated only when its own tile arrives; contributions that
 * arrive earlier (the overlap strips of neighbours before it in raster order) wait as small
 * pending strips. For tiles in raster order the stitcher therefore holds at most one row (2D) or
 * one slab (3D) of blocks plus one, and the overlap strips of the next row. Without blending
 * (width 0, the streaming path) each tile is its block: emitted at once, in the tile's own array
 * (the stitcher takes the tiles it is given: their arrays become the blocks').
 */
export function stitchWithBlending(opts: StitchWithBlendingOptions = {}): OperatorFunction<PredictedTile, OutputBlock> {
  return (source) =>
    new Observable<OutputBlock>((subscriber) => {
      const blocksByPlan = new Map<TilePlan, Map<number, BlockState>>();
      const stats = (): StitchStats => {
        let blocksHeld = 0;
        let pendingContributions = 0;
        let heldValues = 0;
        for (const blocks of blocksByPlan.values()) {
          for (const block of blocks.values()) {
            if (block.accumulator) {
              blocksHeld++;
              heldValues += 2 * block.accumulator.weightSum.length;
            }
            pendingContributions += block.pending.length;
            for (const p of block.pending) heldValues += 2 * p.weightSum.length;
          }
        }
        return { blocksHeld, pendingContributions, heldValues };
      };

      const addTile = (tile: PredictedTile): void => {
        const { plan, kept, index: tileIndex } = tile.spec;
        if (tile.data.length !== voxelCount(kept.shape)) {
          throw new Error(`stitchWithBlending: tile ${tile.spec.ordinal} has ${tile.data.length} values for a kept region of [${kept.shape.join(', ')}]`);
        }
        if (unblended(tile)) {
          // Width 0: the block is this tile's kept region and nothing else. Its values as they are,
          // without two accumulators and a division per voxel (sum w*pred / sum w with w = 1 is pred,
          // except -0, which 0 + -0 turns into +0: done here too, so the bytes are the same).
          const data = tile.data;
          for (let i = 0; i < data.length; i++) data[i] += 0;
          subscriber.next({ plan, index: [...tileIndex], region: tile.spec.core, data });
          opts.onStats?.(stats());
          return;
        }
        let blocks = blocksByPlan.get(plan);
        if (!blocks) blocksByPlan.set(plan, (blocks = new Map()));
        const windows = tileIndex.map((k, axis) => blendWindow(plan, axis, k));
        // Blocks this kept region overlaps: per axis, the cores containing its first and last pixel.
        const first = kept.origin.map((o, axis) => Math.floor(o / plan.coreShape[axis]));
        const last = kept.origin.map((o, axis) => Math.floor((o + kept.shape[axis] - 1) / plan.coreShape[axis]));
        const blockIndex = [...first];
        for (;;) {
          const coreSpec = tileSpecAt(plan, blockIndex);
          const region = intersect(kept, coreSpec.core);
          if (region) {
            let block = blocks.get(coreSpec.ordinal);
            if (!block) {
              block = {
                index: [...blockIndex],
                core: coreSpec.core,
                expected: expectedContributors(plan, blockIndex),
                received: 0,
                accumulator: null,
                pending: [],
              };
              blocks.set(coreSpec.ordinal, block);
            }
            const own = coreSpec.ordinal === tile.spec.ordinal;
            if (own) {
              block.accumulator = emptyContribution(block.core);
              accumulate(tile, windows, region, block.accumulator);
              for (const part of block.pending) fold(part, block.accumulator);
              block.pending = [];
            } else if (block.accumulator) {
              accumulate(tile, windows, region, block.accumulator);
            } else {
              const part = emptyContribution(region);
              accumulate(tile, windows, region, part);
              block.pending.push(part);
            }
            block.received++;
            if (block.received === block.expected) {
              const acc = block.accumulator!;
              const data = new Float32Array(acc.weightSum.length);
              for (let i = 0; i < data.length; i++) data[i] = acc.weightedSum[i] / acc.weightSum[i];
              blocks.delete(coreSpec.ordinal);
              subscriber.next({ plan, index: block.index, region: block.core, data });
            }
          }
          let axis = blockIndex.length - 1;
          for (; axis >= 0; axis--) {
            if (++blockIndex[axis] <= last[axis]) break;
            blockIndex[axis] = first[axis];
          }
          if (axis < 0) break;
        }
        if (blocks.size === 0) blocksByPlan.delete(plan);
        opts.onStats?.(stats());
      };

      return source.subscribe({
        next: (tile) => {
          try {
            addTile(tile);
          } catch (error) {
            subscriber.error(error);
          }
        },
        error: (error) => subscriber.error(error),
        complete: () => {
          const incomplete = [...blocksByPlan.values()].reduce((n, blocks) => n + blocks.size, 0);
          if (incomplete > 0) {
            subscriber.error(new Error(`stitchWithBlending: the tiles ended with ${incomplete} output blocks still missing tiles`));
          } else {
            subscriber.complete();
          }
        },
      });
    });
}
