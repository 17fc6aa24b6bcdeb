import { type OperatorFunction, mergeMap, from } from 'rxjs';
import { UsageError } from '../core/errors.js';
import type { Shape } from '../core/volume.js';
import { voxelCount } from '../core/volume.js';

/**
 * Tiling geometry for prediction with a fully convolutional network.
 *
 * Canonical prediction (what tiling reproduces exactly): the model applied to the image extended by
 * REFLECTION (numpy 'reflect', edge not repeated, repeated as often as needed) with the image origin
 * on the pooling grid (the padding before is a multiple of `sizeMultiple`), enough padding on each
 * side for the receptive field and a padded length that is a multiple of `sizeMultiple`, then
 * cropped back. With padding >= receptiveRadius, the exact amount does not change any kept value:
 * a kept pixel sees only values within receptiveRadius, and its phase in the pooling grid is the same.
 *
 * Tiles are cut from that virtual reflected image (coordinates only here; a reader computes the
 * reflected indices), their read origins on the pooling grid, each carrying at least `margin` of
 * context per side that is dropped after prediction. The rest ("kept" region) is the tile's core
 * (one cell of the grid of cores) widened into its neighbours' cores by the blend overlap.
 *
 * All coordinates are image coordinates in pixels/voxels, YX or ZYX; read regions may extend
 * outside [0, n) (reflected there).
 */

export interface TilingOptions {
  /** Tile sizes and tile origins are multiples of this (2^depth for a U-Net's pooling grid). */
  sizeMultiple: number;
  /** Context, in pixels per side, that a pixel's prediction depends on. */
  receptiveRadius: number;
  /** YX or ZYX core size; rounded up to a multiple of sizeMultiple; default chosen from maxTileVoxels. */
  tileShape?: readonly number[];
  /** Per-side context dropped before blending; default receptiveRadius rounded up to sizeMultiple. */
  margin?: number;
  /** Width of the blended overlap between neighbouring kept regions; default 16 (2D) / 8 (3D). */
  blendWidth?: number;
  /** Bound on the voxels of one padded tile (the whole image is one tile when it fits). */
  maxTileVoxels?: number;
}

/** Inclusive-exclusive box: origin and extent per axis (YX or ZYX). */
export interface Region {
  readonly origin: readonly number[];
  readonly shape: readonly number[];
}

export interface TilePlan {
  readonly imageShape: Shape;
  readonly dims: 2 | 3;
  readonly sizeMultiple: number;
  readonly receptiveRadius: number;
  /** Requested context per side; the context actually dropped is `halo - blend extension` >= this. */
  readonly margin: number;
  /** Blended overlap per axis (0 on an axis with a single tile; never more than the core size). */
  readonly blendWidth: readonly number[];
  /** Core (output block) size per axis; a multiple of sizeMultiple. The last core of an axis is clipped to the image. */
  readonly coreShape: readonly number[];
  /** Number of tiles per axis. */
  readonly grid: readonly number[];
  /** Read region = core widened by this on each side (a multiple of sizeMultiple). */
  readonly halo: readonly number[];
  /** Shape of every padded tile fed to the model (all tiles of a plan have the same shape). */
  readonly readShape: readonly number[];
  readonly tileCount: number;
  /** Voxels of one padded tile (prod readShape). */
  readonly tileVoxels: number;
  readonly maxTileVoxels: number;
}

export interface TileSpec {
  readonly plan: TilePlan;
  /** Grid index per axis. */
  readonly index: readonly number[];
  /** Raster (C-order) position in the grid; tiles are emitted in this order. */
  readonly ordinal: number;
  /** This tile's output block: one cell of the grid of cores, clipped to the image. */
  readonly core: Region;
  /** Core widened by the blend overlap, clipped to the image: the pixels this tile contributes. */
  readonly kept: Region;
  /** Padded region read from the virtual reflected image and fed to the model. */
  readonly read: Region;
}

/** What `tileGrid` plans for: the image's shape (YX or ZYX). */
export interface TilingInput {
  readonly shape: Shape;
}

/** Default bound when nothing better is known: 512 MiB over 4 KiB per voxel (a default 32-filter depth-2 U-Net is estimated at 2.2-3 KiB). */
export const DEFAULT_MAX_TILE_VOXELS = Math.floor((1024 * 2 ** 20) / 4096);

export function defaultBlendWidth(dims: 2 | 3): number {
  return dims === 2 ? 16 : 8;
}

function roundUp(value: number, multiple: number): number {
  return Math.ceil(value / multiple) * multiple;
}

function checkNonNegativeInteger(name: string, value: number): void {
  if (!Number.isInteger(value) || value < 0) throw new UsageError(`${name} must be a non-negative integer, got ${value}`);
}

/** Plans the tiles of an image of `shape` (YX or ZYX). Pure; no pixels involved. */
export function planTileGrid(shape: Shape, opts: TilingOptions): TilePlan {
  const dims = shape.length;
  if (dims !== 2 && dims !== 3) throw new UsageError(`image shape must be YX or ZYX, got [${(shape as readonly number[]).join(', ')}]`);
  for (const n of shape) {
    if (!Number.isInteger(n) || n < 1) throw new UsageError(`image shape must be positive integers, got [${shape.join(', ')}]`);
  }
  const m = opts.sizeMultiple;
  if (!Number.isInteger(m) || m < 1) throw new UsageError(`sizeMultiple must be a positive integer, got ${m}`);
  checkNonNegativeInteger('receptiveRadius', opts.receptiveRadius);
  const margin = opts.margin ?? roundUp(opts.receptiveRadius, m);
  checkNonNegativeInteger('margin', margin);
  const requestedBlend = opts.blendWidth ?? defaultBlendWidth(dims);
  checkNonNegativeInteger('blendWidth', requestedBlend);
  const maxTileVoxels = opts.maxTileVoxels ?? DEFAULT_MAX_TILE_VOXELS;
  if (!(maxTileVoxels > 0)) throw new UsageError(`maxTileVoxels must be positive, got ${maxTileVoxels}`);

  // Halo: kept extension into the neighbours (up to ceil(blend/2)) plus the margin, on the pooling grid.
  const haloFor = (tilesOnAxis: number, blend: number): number =>
    roundUp(margin + (tilesOnAxis > 1 ? Math.ceil(blend / 2) : 0), m);
  const wholeCore = shape.map((n) => roundUp(n, m));

  let core: number[];
  if (opts.tileShape !== undefined) {
    if (opts.tileShape.length !== dims) {
      throw new UsageError(`tileShape must have ${dims} axes like the image, got [${opts.tileShape.join(', ')}]`);
    }
    core = opts.tileShape.map((t, axis) => {
      if (!Number.isInteger(t) || t < 1) throw new UsageError(`tileShape must be positive integers, got [${opts.tileShape!.join(', ')}]`);
      return Math.min(roundUp(t, m), wholeCore[axis]);
    });
  } else {
    // Least total work that fits: every core/read voxel beyond the image is computed for nothing, and
    // with a 3D receptive field of ~20 voxels the halo can dwarf a small core. So search the tile
    // counts per axis (balanced cores on the pooling grid) and keep the plan computing the fewest
    // voxels in all; ties go to fewer tiles.
    const candidates = shape.map((n, axis) => {
      const sizes = new Set<number>();
      const maxTiles = Math.min(Math.ceil(n / m), 64);
      for (let k = 1; k <= maxTiles; k++) sizes.add(Math.min(roundUp(Math.ceil(n / k), m), wholeCore[axis]));
      return [...sizes];
    });
    let best: { core: number[]; work: number; tiles: number } | null = null;
    const visit = (axis: number, chosen: number[]): void => {
      if (axis === dims) {
        const grid = chosen.map((c, a) => Math.ceil(shape[a] / c));
        const read = chosen.map((c, a) => c + 2 * haloFor(grid[a], requestedBlend));
        const readVoxels = voxelCount(read);
        if (readVoxels > maxTileVoxels) return;
        const tiles = voxelCount(grid);
        const work = tiles * readVoxels;
        if (best === null || work < best.work || (work === best.work && tiles < best.tiles)) best = { core: [...chosen], work, tiles };
        return;
      }
      for (const c of candidates[axis]) visit(axis + 1, [...chosen, c]);
    };
    visit(0, []);
    // Nothing fits: the smallest tile there is (one pooling cell per axis), over the bound.
    core = best === null ? shape.map(() => m) : (best as { core: number[] }).core;
    // Balance: the same number of tiles, cores as even as the pooling grid allows (less padding waste at the end).
    core = core.map((c, axis) => roundUp(Math.ceil(shape[axis] / Math.ceil(shape[axis] / c)), m));
  }
  const grid = core.map((c, axis) => Math.ceil(shape[axis] / c));
  // Kept regions overlap only immediate neighbours when blend <= core.
  const blendWidth = core.map((c, axis) => (grid[axis] > 1 ? Math.min(requestedBlend, c) : 0));
  const halo = core.map((_, axis) => haloFor(grid[axis], blendWidth[axis]));
  const readShape = core.map((c, axis) => c + 2 * halo[axis]);
  return {
    imageShape: shape,
    dims,
    sizeMultiple: m,
    receptiveRadius: opts.receptiveRadius,
    margin,
    blendWidth,
    coreShape: core,
    grid,
    halo,
    readShape,
    tileCount: voxelCount(grid),
    tileVoxels: voxelCount(readShape),
    maxTileVoxels,
  };
}

/** Along one axis: [start, end) of core, kept and read for tile `k`. */
export function axisExtents(
  plan: TilePlan,
  axis: number,
  k: number,
): { core: [number, number]; kept: [number, number]; read: [number, number] } {
  const n = plan.imageShape[axis];
  const c = plan.coreShape[axis];
  const blend = plan.blendWidth[axis];
  const before = Math.floor(blend / 2);
  const after = blend - before;
  const coreStart = k * c;
  const coreEnd = Math.min((k + 1) * c, n);
  return {
    core: [coreStart, coreEnd],
    kept: [Math.max(0, coreStart - before), Math.min(n, coreEnd + after)],
    read: [coreStart - plan.halo[axis], (k + 1) * c + plan.halo[axis]],
  };
}

/** The TileSpec at grid `index` of `plan`. */
export function tileSpecAt(plan: TilePlan, index: readonly number[]): TileSpec {
  const extents = index.map((k, axis) => axisExtents(plan, axis, k));
  const region = (which: 'core' | 'kept' | 'read'): Region => ({
    origin: extents.map((e) => e[which][0]),
    shape: extents.map((e) => e[which][1] - e[which][0]),
  });
  let ordinal = 0;
  for (let axis = 0; axis < index.length; axis++) ordinal = ordinal * plan.grid[axis] + index[axis];
  return { plan, index, ordinal, core: region('core'), kept: region('kept'), read: region('read') };
}

/** All tiles of a plan in raster (C) order, lazily. */
export function* tileSpecs(plan: TilePlan): Generator<TileSpec> {
  const index = plan.grid.map(() => 0);
  for (let ordinal = 0; ordinal < plan.tileCount; ordinal++) {
    yield tileSpecAt(plan, [...index]);
    for (let axis = index.length - 1; axis >= 0; axis--) {
      if (++index[axis] < plan.grid[axis]) break;
      index[axis] = 0;
    }
  }
}

/**
 * Image shape -> the coordinates of its tiles (core, kept and padded read regions), in raster
 * order. Emits coordinates only; pixels are read later by whoever predicts the tile.
 */
export function tileGrid(opts: TilingOptions): OperatorFunction<TilingInput, TileSpec> {
  return mergeMap((input: TilingInput) => from(tileSpecs(planTileGrid(input.shape, opts))));
}
