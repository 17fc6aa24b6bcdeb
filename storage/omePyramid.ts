/**
 * The OME-Zarr pyramid: its levels (2x in y and x, z kept: see planPyramid) and each level computed
 * chunk by chunk from the one below (mean of the 2x2 blocks), reading only the chunks under it.
 */
import { chunkGrid, type ArrayInfo, type ChunkedArrayReader, type Placement } from './chunked.js';
import type { ZarrArrayWriter } from './zarr.js';
import { voxelCount } from '../core/volume.js';

export interface PyramidLevel {
  shape: number[];
  placement: Placement;
  /** Downsampling factor per axis from the level below (1 or 2); level 0: all 1. */
  factors: number[];
}

const MAX_LEVELS_DEFAULT = 12;

/**
 * Plans the pyramid: 2x in y and x until a level fits one chunk in y and x.
 * z is never downsampled: viv's MultiscaleImageLayer (and so vizarr) hands the same z index to
 * every level (viv issue #901, "Support downsampled Z", open), so a halved z would show another
 * plane, or fail, once zoomed out. A level whose x extent would be 4 or less is not made: viv's
 * loaders read an array whose last axis has 3 or 4 entries as interleaved RGB(A) (isInterleaved).
 */
export function planPyramid(shape: readonly number[], chunks: readonly number[], placement: Placement, maxLevels = MAX_LEVELS_DEFAULT): PyramidLevel[] {
  const rank = shape.length;
  const factors = shape.map((_, axis) => (axis >= rank - 2 ? 2 : 1));
  const levels: PyramidLevel[] = [{ shape: [...shape], placement: { scale: [...placement.scale], translation: [...placement.translation] }, factors: new Array(rank).fill(1) }];
  while (levels.length < maxLevels) {
    const last = levels[levels.length - 1];
    if (last.shape[rank - 2] <= chunks[rank - 2] && last.shape[rank - 1] <= chunks[rank - 1]) break;
    const next = last.shape.map((n, axis) => Math.ceil(n / factors[axis]));
    if (next[rank - 1] <= 4) break;
    levels.push({
      shape: next,
      placement: {
        scale: last.placement.scale.map((s, axis) => s * factors[axis]),
        // The new pixel's centre is the mean of the centres it averages.
        translation: last.placement.translation.map((t, axis) => t + ((factors[axis] - 1) / 2) * last.placement.scale[axis]),
      },
      factors: [...factors],
    });
  }
  return levels;
}

/** Level k chunk by chunk: each output chunk reads the 2^d chunks (or fewer) below it, nothing more. */
export async function downsampleLevel(below: ChunkedArrayReader, target: ZarrArrayWriter, concurrency: number): Promise<void> {
  const chunks = target.info.chunks;
  const factors = target.info.shape.map((n, axis) => (below.info.shape[axis] === n ? 1 : 2));
  const grid = chunkGrid(target.info);
  const belowGrid = chunkGrid(below.info);
  const total = voxelCount(grid);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < total) {
      const ordinal = next++;
      const index = unravel(ordinal, grid);
      // Region of the level below covered by this output chunk.
      const origin = index.map((i, axis) => i * chunks[axis] * factors[axis]);
      const extent = chunks.map((c, axis) => Math.min(c * factors[axis], Math.max(0, below.info.shape[axis] - origin[axis])));
      const sums = new Float64Array(voxelCount(chunks));
      const counts = new Uint32Array(sums.length);
      const firstChunk = origin.map((o, axis) => Math.floor(o / below.info.chunks[axis]));
      const lastChunk = origin.map((o, axis) => Math.min(belowGrid[axis] - 1, Math.floor((o + Math.max(extent[axis], 1) - 1) / below.info.chunks[axis])));
      const span = lastChunk.map((l, axis) => l - firstChunk[axis] + 1);
      for (let s = 0; s < voxelCount(span); s++) {
        const sourceIndex = unravel(s, span).map((v, axis) => v + firstChunk[axis]);
        const values = await below.readChunk(sourceIndex);
        accumulate(values, sourceIndex, below.info, origin, extent, factors, chunks, sums, counts);
      }
      const out = new Float32Array(sums.length);
      for (let i = 0; i < out.length; i++) out[i] = counts[i] ? sums[i] / counts[i] : 0;
      await target.writeChunk(index, out);
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, total) }, worker));
}

/** The chunk index of a C-order ordinal in a chunk grid. */
export function unravel(ordinal: number, grid: readonly number[]): number[] {
  const index = new Array<number>(grid.length);
  let rest = ordinal;
  for (let axis = grid.length - 1; axis >= 0; axis--) {
    index[axis] = rest % grid[axis];
    rest = Math.floor(rest / grid[axis]);
  }
  return index;
}

/** Adds the voxels of one source chunk that lie inside the array and the region to their output cells. */
function accumulate(
  values: Float32Array,
  sourceIndex: number[],
  source: ArrayInfo,
  origin: number[],
  extent: number[],
  factors: number[],
  outChunks: readonly number[],
  sums: Float64Array,
  counts: Uint32Array,
): void {
  const rank = sourceIndex.length;
  const chunkStart = sourceIndex.map((i, axis) => i * source.chunks[axis]);
  // Per axis, the source-local range inside the array and the region.
  const lo = chunkStart.map((s, axis) => Math.max(s, origin[axis]) - s);
  const hi = chunkStart.map((s, axis) => Math.min(s + source.chunks[axis], origin[axis] + extent[axis], source.shape[axis]) - s);
  if (lo.some((l, axis) => l >= hi[axis])) return;
  const srcStride = new Array<number>(rank);
  const outStride = new Array<number>(rank);
  let a = 1;
  let b = 1;
  for (let axis = rank - 1; axis >= 0; axis--) {
    srcStride[axis] = a;
    outStride[axis] = b;
    a *= source.chunks[axis];
    b *= outChunks[axis];
  }
  const counter = lo.slice();
  const last = rank - 1;
  for (;;) {
    let srcBase = 0;
    let outBase = 0;
    for (let axis = 0; axis < last; axis++) {
      srcBase += counter[axis] * srcStride[axis];
      outBase += Math.floor((chunkStart[axis] + counter[axis] - origin[axis]) / factors[axis]) * outStride[axis];
    }
    const fx = factors[last];
    for (let x = lo[last]; x < hi[last]; x++) {
      const o = outBase + Math.floor((chunkStart[last] + x - origin[last]) / fx);
      sums[o] += values[srcBase + x];
      counts[o]++;
    }
    let axis = last - 1;
    while (axis >= 0) {
      counter[axis]++;
      if (counter[axis] < hi[axis]) break;
      counter[axis] = lo[axis];
      axis--;
    }
    if (axis < 0) break;
  }
}
