import { type OperatorFunction, mergeMap, from } from 'rxjs';
import { UsageError } from '../core/errors.js';
import type { Shape } from '../core/volume.js';
import { reflectIndex, voxelCount } from '../core/volume.js';

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
  /**
   * How far (a factor, default 1) the bound may grow where the halo dominates: it doubles while
   * that more than halves the voxels computed in all (memory x time falls).
   */
  maxTileOverrun?: number;
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
      // Past 64 tiles a side (a mosaic), smaller cores on a geometric ladder, so that one fits the bound.
      if (Math.ceil(n / m) > maxTiles) for (let c = m; c < wholeCore[axis]; c = roundUp(Math.ceil(c * 1.25), m)) sizes.add(c);
      return [...sizes];
    });
    const leastWork = (bound: number): { core: number[]; work: number; tiles: number } | null => {
      let best: { core: number[]; work: number; tiles: number } | null = null;
      const visit = (axis: number, chosen: number[]): void => {
        if (axis === dims) {
          const grid = chosen.map((c, a) => Math.ceil(shape[a] / c));
          const read = chosen.map((c, a) => c + 2 * haloFor(grid[a], Math.min(requestedBlend, c)));
          const readVoxels = voxelCount(read);
          if (readVoxels > bound) return;
          const tiles = voxelCount(grid);
          const work = tiles * readVoxels;
          if (best === null || work < best.work || (work === best.work && tiles < best.tiles)) best = { core: [...chosen], work, tiles };
          return;
        }
        for (const c of candidates[axis]) visit(axis + 1, [...chosen, c]);
      };
      visit(0, []);
      return best;
    };
    // Nothing fits when the receptive field alone is over the bound (a blind-spot network in 3D):
    // the bound doubles until a plan fits, so a tile stays within twice the smallest exact one
    // (tiles of one pooling cell would recompute the whole halo per cell).
    let bound = maxTileVoxels;
    let found = leastWork(bound);
    while (found === null) {
      bound *= 2;
      found = leastWork(bound);
    }
    // Where the halo dominates (3D laine19 of depth 1 on 8x48x48 within its bound: 288 tiles of
    // 40x40x38 computing 950x the volume's voxels), a larger tile is worth its memory.
    const overrun = opts.maxTileOverrun ?? 1;
    while (2 * bound <= overrun * maxTileVoxels) {
      const larger = leastWork(2 * bound);
      if (larger === null || 2 * larger.work >= found.work) break;
      bound *= 2;
      found = larger;
    }
    core = found.core;
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

// ---------------------------------------------------------------------------------------------
// Block order with input-chunk locality.
//
// Neighbouring blocks read the same input chunks (their halos overlap). In raster order a block
// shares chunks with its neighbour on axis 0 one whole plane (3D) or row (2D) of blocks later, so
// the cache must hold a plane's worth of halo chunks or those chunks are fetched again. Sweeping
// the grid column by column instead (a column: a cross-section of blocks on the other axes, all
// positions on axis 0) only needs the chunks of two consecutive layers of one column at once;
// chunks read by two columns (across a column's side faces) are fetched once per column. A
// column as wide as the grid is raster order. Bricks of full columns beat cubes or a space-filling
// curve for the same cache: the re-fetched fraction goes with a column's perimeter over its area
// (1/sqrt(cache)), a cube's with its surface over its volume (1/cbrt(cache)).

/**
 * Along `axis`, the input chunks [first[k], last[k]] that block k's read region touches (reflection
 * included: a read region always contains its core, so the touched chunks are one contiguous run).
 */
export function readChunkSpans(plan: TilePlan, axis: number, chunk: number): { first: Int32Array; last: Int32Array } {
  if (!Number.isInteger(chunk) || chunk < 1) throw new RangeError(`readChunkSpans: chunk size must be a positive integer, got ${chunk}`);
  const n = plan.imageShape[axis];
  const blocks = plan.grid[axis];
  const first = new Int32Array(blocks);
  const last = new Int32Array(blocks);
  for (let k = 0; k < blocks; k++) {
    const [start, end] = axisExtents(plan, axis, k).read;
    let low = Infinity;
    let high = -Infinity;
    if (end - start >= 2 * n) {
      // Covers a whole period of the reflection (and more): every sample.
      low = 0;
      high = n - 1;
    } else {
      for (let i = start; i < end; i++) {
        const j = reflectIndex(i, n);
        if (j < low) low = j;
        if (j > high) high = j;
      }
    }
    first[k] = Math.floor(low / chunk);
    last[k] = Math.floor(high / chunk);
  }
  return { first, last };
}

/** How a grid of blocks is swept: column by column along axis 0. */
export interface BlockSweep {
  /** Blocks per axis of one column: 1 on axis 0 (the swept axis), the cross-section on the others; the grid's whole extent on every axis is raster order. */
  readonly column: readonly number[];
  /** Input chunks the cache must hold for a column's sweep to fetch each of its chunks once (see planBlockSweep). */
  readonly workingSetChunks: number;
  /**
   * Expected input-chunk fetches per distinct chunk over the whole grid with the cache planned for:
   * 1 plus the re-fetches across column faces when the working set fits; for raster order that
   * does not fit, the re-fetches of every layer's chunks by the next layer.
   */
  readonly fetchesPerChunk: number;
}

/** Per candidate group size along one cross axis: chunk fetches summed over the groups, and the widest group's chunks. */
function groupCosts(first: Int32Array, last: Int32Array, sizes: readonly number[]): Array<{ size: number; fetched: number; widest: number }> {
  const blocks = first.length;
  return sizes.map((size) => {
    let fetched = 0;
    let widest = 0;
    for (let g = 0; g < blocks; g += size) {
      const end = Math.min(g + size, blocks) - 1;
      let low = Infinity;
      let high = -Infinity;
      for (let k = g; k <= end; k++) {
        low = Math.min(low, first[k]);
        high = Math.max(high, last[k]);
      }
      fetched += high - low + 1;
      widest = Math.max(widest, high - low + 1);
    }
    return { size, fetched, widest };
  });
}

/** Chunks touched along an axis by one block (`together` 1) or two neighbouring blocks (2), at most. */
function widestSpan(first: Int32Array, last: Int32Array, together: 1 | 2): number {
  let widest = 0;
  for (let k = 0; k < first.length; k++) {
    const next = Math.min(k + together - 1, first.length - 1);
    widest = Math.max(widest, Math.max(last[k], last[next]) - Math.min(first[k], first[next]) + 1);
  }
  return widest;
}

/** Column sizes tried along an axis of `blocks` blocks: all of them up to 256, else 1..64 and the balanced splits ceil(blocks/k). */
function columnSizeCandidates(blocks: number): number[] {
  if (blocks <= 256) return Array.from({ length: blocks }, (_, i) => i + 1);
  const sizes = new Set<number>();
  for (let s = 1; s <= 64; s++) sizes.add(s);
  for (let k = 1; k <= 64; k++) sizes.add(Math.ceil(blocks / k));
  return [...sizes].sort((a, b) => a - b);
}

/**
 * The column cross-section that fetches each input chunk the fewest times while its working set
 * fits in `cacheChunks`; ties go to wider columns (raster order when it fits). Raster order also
 * when no column fitting the cache would fetch less than raster order does without reuse between
 * layers (a cache too small for anything: then the status quo), and with `rasterOnly` (for
 * comparison). `inputChunks`: the input's chunk shape, same axes as the plan.
 *
 * Working set: a chunk read by layers k and k+1 of a column (along axis 0) is reused after the
 * rest of layer k and the start of layer k+1 have been read, i.e. about one layer's chunks over
 * the column's cross-section, two layers' near the block being read. So an LRU cache of
 * (widest layer span x cross-section) + (extra layers of two spans x two neighbouring blocks'
 * span on the first cross axis x the rest of the cross-section) chunks fetches each of the
 * column's chunks once; the chunks of read-ahead tiles are the caller's to leave room for.
 */
export function planBlockSweep(plan: TilePlan, inputChunks: readonly number[], cacheChunks: number, opts: { rasterOnly?: boolean } = {}): BlockSweep {
  const dims = plan.grid.length;
  if (inputChunks.length !== dims) throw new RangeError(`planBlockSweep: input chunks [${inputChunks.join(', ')}] do not match the ${dims} axes of the plan`);
  const spans = inputChunks.map((chunk, axis) => readChunkSpans(plan, axis, chunk));
  const chunksOnAxis = inputChunks.map((chunk, axis) => Math.ceil(plan.imageShape[axis] / chunk));
  const layer = widestSpan(spans[0].first, spans[0].last, 1);
  const layerPair = widestSpan(spans[0].first, spans[0].last, 2);
  const firstCrossPair = widestSpan(spans[1].first, spans[1].last, 2);
  const crossAxes = Array.from({ length: dims - 1 }, (_, i) => i + 1);
  const costs = crossAxes.map((axis) => groupCosts(spans[axis].first, spans[axis].last, columnSizeCandidates(plan.grid[axis])));
  type Candidate = { column: number[]; workingSet: number; ratio: number; blocks: number };
  let best: Candidate | null = null;
  let raster: Candidate | null = null;
  const visit = (i: number, column: number[], widest: number[], ratio: number): void => {
    if (i === crossAxes.length) {
      const crossSection = widest.reduce((a, b) => a * b, 1);
      const nearBlock = (crossSection / widest[0]) * Math.min(firstCrossPair, widest[0]);
      const workingSet = layer * crossSection + (layerPair - layer) * nearBlock;
      const candidate = { column: [1, ...column], workingSet, ratio, blocks: column.reduce((a, b) => a * b, 1) };
      if (column.every((size, c) => size === plan.grid[crossAxes[c]])) raster = candidate;
      if (workingSet > cacheChunks) return;
      // Ratios are products of small rationals: compare with a tolerance so ties are ties.
      if (best === null || ratio < best.ratio - 1e-9 || (Math.abs(ratio - best.ratio) <= 1e-9 && candidate.blocks > best.blocks)) best = candidate;
      return;
    }
    const axis = crossAxes[i];
    for (const cost of costs[i]) visit(i + 1, [...column, cost.size], [...widest, cost.widest], ratio * (cost.fetched / chunksOnAxis[axis]));
  };
  visit(0, [], [], 1);
  const fullWidth = raster as unknown as Candidate;
  if (fullWidth.workingSet > cacheChunks || opts.rasterOnly) {
    // Raster order with a cache too small for a layer: each layer's chunks fetched again by the next (optimistic: reuse within a layer kept).
    let layerSpans = 0;
    for (let k = 0; k < plan.grid[0]; k++) layerSpans += spans[0].last[k] - spans[0].first[k] + 1;
    const rasterRatio = layerSpans / chunksOnAxis[0];
    const chosen = best as Candidate | null;
    const rasterFetches = fullWidth.workingSet > cacheChunks ? rasterRatio : 1;
    if (chosen === null || chosen.ratio >= rasterFetches || opts.rasterOnly) return { column: fullWidth.column, workingSetChunks: fullWidth.workingSet, fetchesPerChunk: rasterFetches };
    return { column: chosen.column, workingSetChunks: chosen.workingSet, fetchesPerChunk: chosen.ratio };
  }
  return { column: fullWidth.column, workingSetChunks: fullWidth.workingSet, fetchesPerChunk: 1 };
}

/**
 * Grid indices of the blocks with raster ordinals in [start, end), column by column: columns in
 * raster order over the cross axes, each swept along axis 0 (alternately up and down, so that
 * consecutive columns meet at the same layer and share its face chunks), its blocks in raster
 * order within each layer. Every block of the range comes exactly once; only the order differs
 * from raster order (`column` as wide as the grid on every cross axis gives raster order itself).
 */
export function* sweepBlocks(grid: readonly number[], column: readonly number[], range: { start: number; end: number } = { start: 0, end: voxelCount(grid) }): Generator<number[]> {
  const dims = grid.length;
  if (column.length !== dims || column[0] !== 1 || column.some((c) => !Number.isInteger(c) || c < 1)) {
    throw new RangeError(`sweepBlocks: column [${column.join(', ')}] must be 1 on axis 0 and positive integers on the ${dims - 1} other axes`);
  }
  const { start, end } = range;
  if (end <= start) return;
  const planeBlocks = voxelCount(grid) / grid[0];
  const firstLayer = Math.floor(start / planeBlocks);
  const lastLayer = Math.floor((end - 1) / planeBlocks);
  const crossGrid = grid.slice(1);
  const crossColumn = column.slice(1);
  const columnsPerAxis = crossGrid.map((g, i) => Math.ceil(g / crossColumn[i]));
  const columnCount = voxelCount(columnsPerAxis);
  const columnIndex = crossGrid.map(() => 0);
  for (let c = 0; c < columnCount; c++) {
    // Cross-section of this column: [low, high) per cross axis.
    const low = columnIndex.map((k, i) => k * crossColumn[i]);
    const high = low.map((l, i) => Math.min(l + crossColumn[i], crossGrid[i]));
    const upwards = c % 2 === 0;
    for (let step = 0; step <= lastLayer - firstLayer; step++) {
      const layer = upwards ? firstLayer + step : lastLayer - step;
      const cross = [...low];
      for (;;) {
        let crossOrdinal = 0;
        for (let i = 0; i < cross.length; i++) crossOrdinal = crossOrdinal * crossGrid[i] + cross[i];
        const ordinal = layer * planeBlocks + crossOrdinal;
        if (ordinal >= start && ordinal < end) yield [layer, ...cross];
        let i = cross.length - 1;
        for (; i >= 0; i--) {
          if (++cross[i] < high[i]) break;
          cross[i] = low[i];
        }
        if (i < 0) break;
      }
    }
    for (let i = columnIndex.length - 1; i >= 0; i--) {
      if (++columnIndex[i] < columnsPerAxis[i]) break;
      columnIndex[i] = 0;
    }
  }
}
