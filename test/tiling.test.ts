import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { from, lastValueFrom, mergeMap, of, tap, timer, map, toArray } from 'rxjs';
import { beforeAll, describe, expect, test } from 'vitest';
import { Rng } from '../core/rng.js';
import type { Shape } from '../core/volume.js';
import { voxelCount } from '../core/volume.js';
import { predictTiles } from '../operators/predictTiles.js';
import { type OutputBlock, type StitchStats, blendWindow, stitchWithBlending } from '../operators/stitchWithBlending.js';
import { type TileSpec, planTileGrid, tileGrid, tileSpecs } from '../operators/tileGrid.js';
import { TILE_OVERRUN_FACTOR, planTiles, predictVolume, reflectedRegionReader } from '../pipeline/predict.js';
import { reflectIndex } from '../core/volume.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

const identity = (x: tf.Tensor): tf.Tensor => x.clone();

function randomImage(shape: Shape, seed: number): Float32Array {
  const rng = new Rng(seed);
  return Float32Array.from({ length: voxelCount(shape) }, () => rng.normal());
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  let d = 0;
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i] - b[i]));
  return d;
}

describe('planTiles', () => {
  const cases: Array<{ shape: Shape; tileShape?: number[]; maxTileVoxels?: number; blendWidth?: number; margin?: number }> = [
    { shape: [70, 83], tileShape: [16, 20] },
    { shape: [70, 83], tileShape: [5, 7], blendWidth: 3 },
    { shape: [70, 83], maxTileVoxels: 4000 },
    { shape: [1, 200], maxTileVoxels: 3000, margin: 5 },
    { shape: [12, 37, 41], tileShape: [8, 12, 16] },
    { shape: [12, 37, 41], maxTileVoxels: 70_000, blendWidth: 20 },
    { shape: [3, 5, 2], tileShape: [4, 4, 4] },
  ];
  for (const c of cases) {
    test(`geometry of ${JSON.stringify(c)}`, () => {
      const m = 4;
      const r = 11;
      const plan = planTiles(c.shape, { sizeMultiple: m, receptiveRadius: r, ...c });
      const margin = c.margin ?? 12;
      expect(plan.margin).toBe(margin);
      const covered = new Uint8Array(voxelCount(c.shape));
      const specs = [...tileSpecs(plan)];
      expect(specs.length).toBe(plan.tileCount);
      specs.forEach((spec, ordinal) => {
        expect(spec.ordinal).toBe(ordinal);
        expect(spec.read.shape).toEqual(plan.readShape);
        for (let axis = 0; axis < c.shape.length; axis++) {
          // Pooling grid: read origins and sizes are multiples of sizeMultiple (the image origin is on the grid).
          expect(((spec.read.origin[axis] % m) + m) % m).toBe(0);
          expect(spec.read.shape[axis] % m).toBe(0);
          expect(plan.coreShape[axis] % m).toBe(0);
          // Kept region: inside the image, contains the core, and at least `margin` from the read edges.
          const keptStart = spec.kept.origin[axis];
          const keptEnd = keptStart + spec.kept.shape[axis];
          expect(keptStart).toBeGreaterThanOrEqual(0);
          expect(keptEnd).toBeLessThanOrEqual(c.shape[axis]);
          expect(keptStart).toBeLessThanOrEqual(spec.core.origin[axis]);
          expect(keptEnd).toBeGreaterThanOrEqual(spec.core.origin[axis] + spec.core.shape[axis]);
          expect(keptStart - spec.read.origin[axis]).toBeGreaterThanOrEqual(margin);
          expect(spec.read.origin[axis] + spec.read.shape[axis] - keptEnd).toBeGreaterThanOrEqual(margin);
        }
        // Cores partition the image.
        const [cz, cy, cx] = spec.core.shape.length === 2 ? [1, ...spec.core.shape] : spec.core.shape;
        const [oz, oy, ox] = spec.core.origin.length === 2 ? [0, ...spec.core.origin] : spec.core.origin;
        const [, ny, nx] = c.shape.length === 2 ? [1, ...c.shape] : c.shape;
        for (let z = 0; z < cz; z++) for (let y = 0; y < cy; y++) for (let x = 0; x < cx; x++) covered[((oz + z) * ny + oy + y) * nx + ox + x]++;
      });
      expect(covered.every((v) => v === 1)).toBe(true);
      if (c.maxTileVoxels !== undefined) {
        // predictVolume's plan may overrun the bound where the halo dominates; the strict plan holds it.
        expect(plan.tileVoxels).toBeLessThanOrEqual(TILE_OVERRUN_FACTOR * c.maxTileVoxels);
        expect(planTileGrid(c.shape, { sizeMultiple: m, receptiveRadius: r, ...c }).tileVoxels).toBeLessThanOrEqual(c.maxTileVoxels);
      }
      if (c.tileShape !== undefined) {
        expect(plan.coreShape).toEqual(c.tileShape.map((t, axis) => Math.min(Math.ceil(t / m) * m, Math.ceil(c.shape[axis] / m) * m)));
      }
    });
  }

  test('the whole image is one tile when its padded form fits, and only then', () => {
    const opts = { sizeMultiple: 4, receptiveRadius: 23 };
    const whole = (70 + 2 + 48) * (83 + 1 + 48); // cores rounded to 72 x 84, halo 24 per side
    expect(planTiles([70, 83], { ...opts, maxTileVoxels: whole }).tileCount).toBe(1);
    expect(planTiles([70, 83], { ...opts, maxTileVoxels: whole - 1 }).tileCount).toBeGreaterThan(1);
  });

  test('a halo-dominated plan grows its tile only where that more than halves the work, up to the overrun', () => {
    // A 3D laine19 of depth 1 (pooling grid 2, radius 15) on 8x48x48 at its estimated bound.
    const geometry = { sizeMultiple: 2, receptiveRadius: 15, maxTileVoxels: 62_800 };
    const work = (p: { tileCount: number; tileVoxels: number }): number => p.tileCount * p.tileVoxels;
    const strict = planTileGrid([8, 48, 48], geometry);
    expect(strict.tileVoxels).toBeLessThanOrEqual(geometry.maxTileVoxels);
    expect(work(strict)).toBeGreaterThan(500 * 8 * 48 * 48); // 288 tiles: the halo is computed ~950x
    const planned = planTiles([8, 48, 48], geometry); // predictVolume's plan: overrun up to TILE_OVERRUN_FACTOR
    expect(planned.tileVoxels).toBeGreaterThan(geometry.maxTileVoxels);
    expect(planned.tileVoxels).toBeLessThanOrEqual(TILE_OVERRUN_FACTOR * geometry.maxTileVoxels);
    expect(work(planned)).toBeLessThan(work(strict) / 20);
    // A U-Net's halo on a large image: doubling the tile would not halve the work, so the bound holds.
    const unet = planTiles([2000, 3000], { sizeMultiple: 4, receptiveRadius: 23, maxTileVoxels: 350_000 });
    expect(unet.tileVoxels).toBeLessThanOrEqual(350_000);
    expect(unet.tileVoxels).toBeGreaterThan(350_000 / 2);
  });

  test('when nothing fits the bound, tiles stay within twice the smallest exact one, not one pooling cell each', () => {
    // Radius 31 on a 3D grid of 4: the smallest exact tile is 4 + 2 * 36 = 76 voxels a side.
    const opts = { sizeMultiple: 4, receptiveRadius: 31, maxTileVoxels: 100_000 };
    const plan = planTileGrid([16, 64, 64], opts);
    const smallest = 76 ** 3;
    expect(smallest).toBeGreaterThan(opts.maxTileVoxels);
    expect(plan.tileVoxels).toBeLessThanOrEqual(2 * smallest);
    expect(plan.tileCount).toBeLessThan((16 / 4) * (64 / 4) * (64 / 4));
  });

  test('a mosaic past 64 tiles a side still gets tiles that use most of the bound', () => {
    const opts = { sizeMultiple: 4, receptiveRadius: 23, maxTileVoxels: 200_000 };
    const plan = planTiles([1_000, 200_000], opts);
    expect(plan.tileVoxels).toBeLessThanOrEqual(opts.maxTileVoxels);
    expect(plan.tileVoxels).toBeGreaterThan(opts.maxTileVoxels / 2);
  });

  test('rejects bad options with a message naming them', () => {
    expect(() => planTiles([10, 10], { sizeMultiple: 0, receptiveRadius: 3 })).toThrow(/sizeMultiple/);
    expect(() => planTiles([10, 10], { sizeMultiple: 4, receptiveRadius: 3, tileShape: [8] })).toThrow(/tileShape/);
    expect(() => planTiles([10, 10], { sizeMultiple: 4, receptiveRadius: -1 })).toThrow(/receptiveRadius/);
  });
});

test('reflectIndex is numpy "reflect" extended indefinitely', () => {
  for (const n of [1, 2, 3, 7]) {
    // Walk back and forth over 0..n-1 without repeating the edge samples.
    const bounce: number[] = [];
    for (let i = 0; bounce.length < 60; i++) bounce.push(n === 1 ? 0 : [...Array(n).keys(), ...Array.from({ length: n - 2 }, (_, k) => n - 2 - k)][i % (2 * n - 2)]);
    for (let i = 0; i < 60; i++) expect(reflectIndex(i, n)).toBe(bounce[i]);
    for (let i = 1; i < 30; i++) expect(reflectIndex(-i, n)).toBe(reflectIndex(i, n));
  }
});

test('blend windows are positive, 1 in core interiors, and sum to 1 across tiles', () => {
  for (const blendWidth of [0, 1, 6, 7, 16]) {
    const plan = planTiles([1, 83], { sizeMultiple: 4, receptiveRadius: 5, tileShape: [4, 16], blendWidth });
    const total = new Float64Array(83);
    for (let k = 0; k < plan.grid[1]; k++) {
      const spec = [...tileSpecs(plan)][k];
      const window = blendWindow(plan, 1, k);
      expect(window.length).toBe(spec.kept.shape[1]);
      window.forEach((w, i) => {
        expect(w).toBeGreaterThan(0);
        total[spec.kept.origin[1] + i] += w;
      });
      // Core pixels farther than blend/2 from a neighbour have weight exactly 1.
      const half = Math.ceil(plan.blendWidth[1] / 2);
      for (let p = spec.core.origin[1] + half; p < spec.core.origin[1] + spec.core.shape[1] - half; p++) {
        expect(window[p - spec.kept.origin[1]]).toBe(1);
      }
    }
    total.forEach((t) => expect(t).toBeCloseTo(1, 12));
  }
});

test('tiled identity reproduces 2D and 3D images (odd shapes, many tiles, batches, tta) without leaking tensors', async () => {
  for (const [shape, tileShape] of [
    [[70, 83], [16, 20]],
    [[12, 37, 41], [4, 8, 12]],
  ] as Array<[Shape, number[]]>) {
    const image = randomImage(shape, 7);
    for (const tta of [false, true]) {
      const before = tf.memory().numTensors;
      const progress: number[] = [];
      const out = await predictVolume(identity, image, shape, {
        sizeMultiple: 4,
        receptiveRadius: 6,
        tileShape,
        blendWidth: 5,
        batchSize: 3,
        tta,
        onProgress: (done, total) => progress.push(done / total),
      });
      expect(tf.memory().numTensors).toBe(before);
      expect(maxAbsDiff(out, image)).toBeLessThan(1e-5);
      const plan = planTiles(shape, { sizeMultiple: 4, receptiveRadius: 6, tileShape, blendWidth: 5 });
      expect(plan.tileCount).toBeGreaterThan(20);
      expect(progress.length).toBe(plan.tileCount);
      expect(progress.at(-1)).toBe(1);
    }
  }
});

test('blending averages neighbouring predictions with the raised-cosine weights', async () => {
  // A model whose output is its tile's mean: each tile gives a constant, so the blended result
  // shows the weights directly: 1D weights w_k(p) blend tile constants c_k as sum w c / sum w.
  const tileMean = (x: tf.Tensor): tf.Tensor => tf.tidy(() => tf.mul(tf.onesLike(x), tf.mean(x, [1, 2, 3], true)));
  const shape: Shape = [4, 60];
  const image = randomImage(shape, 3);
  const opts = { sizeMultiple: 4, receptiveRadius: 0, margin: 0, tileShape: [4, 20], blendWidth: 8 };
  const out = await predictVolume(tileMean, image, shape, opts);
  const plan = planTiles(shape, opts);
  const specs = [...tileSpecs(plan)];
  const reader = reflectedRegionReader(image, shape);
  const means = specs.map((spec) => reader(spec).reduce((a, b) => a + b, 0) / voxelCount(spec.read.shape));
  for (let p = 0; p < 60; p++) {
    let weighted = 0;
    let weights = 0;
    specs.forEach((spec, k) => {
      const i = p - spec.kept.origin[1];
      if (i < 0 || i >= spec.kept.shape[1]) return;
      const w = blendWindow(plan, 1, k)[i];
      weighted += w * means[k];
      weights += w;
    });
    for (let y = 0; y < 4; y++) expect(out[y * 60 + p]).toBeCloseTo(weighted / weights, 5);
  }
  // The overlap really blends: pixels next to a core boundary mix two different tile values.
  expect(Math.abs(out[20] - means[1])).toBeGreaterThan(1e-4);
  expect(Math.abs(out[20] - means[0])).toBeGreaterThan(1e-4);
});

async function streamStats(shape: Shape, tileShape: number[]): Promise<{ stats: StitchStats[]; blocks: OutputBlock[]; firstBlockAt: number; tiles: number }> {
  const image = randomImage(shape, 1);
  const stats: StitchStats[] = [];
  let tilesSeen = 0;
  let firstBlockAt = -1;
  const blocks = await lastValueFrom(
    of({ shape }).pipe(
      tileGrid({ sizeMultiple: 4, receptiveRadius: 4, tileShape, blendWidth: 6 }),
      predictTiles({ model: identity, readRegion: reflectedRegionReader(image, shape) }),
      tap(() => tilesSeen++),
      stitchWithBlending({ onStats: (s) => stats.push(s) }),
      tap(() => {
        if (firstBlockAt < 0) firstBlockAt = tilesSeen;
      }),
      toArray(),
    ),
  );
  return { stats, blocks, firstBlockAt, tiles: tilesSeen };
}

test('stitcher holds at most one row of blocks (+1) for a large 2D grid and emits blocks as they complete', async () => {
  const shape: Shape = [600, 702];
  const { stats, blocks, firstBlockAt, tiles } = await streamStats(shape, [12, 12]);
  const tilesPerRow = Math.ceil(702 / 12);
  expect(tiles).toBe(50 * tilesPerRow);
  expect(blocks.length).toBe(tiles);
  const maxHeld = Math.max(...stats.map((s) => s.blocksHeld));
  expect(maxHeld).toBeLessThanOrEqual(tilesPerRow + 1);
  expect(maxHeld).toBeGreaterThanOrEqual(tilesPerRow); // the bound is tight, so the test can fail
  // Held values: one row of blocks plus the next row's overlap strips, far below the image.
  expect(Math.max(...stats.map((s) => s.heldValues))).toBeLessThan((2 * 4 * 12 * 702) * 1.5);
  expect(firstBlockAt).toBe(tilesPerRow + 2);
  expect(stats.at(-1)).toEqual({ blocksHeld: 0, pendingContributions: 0, heldValues: 0 });
}, 60_000);

test('stitcher holds at most one slab of blocks (+ one row + 1) for a 3D grid', async () => {
  const { stats, blocks, tiles } = await streamStats([40, 44, 48], [8, 8, 8]);
  const slab = Math.ceil(44 / 8) * Math.ceil(48 / 8);
  expect(blocks.length).toBe(tiles);
  const maxHeld = Math.max(...stats.map((s) => s.blocksHeld));
  expect(maxHeld).toBeLessThanOrEqual(slab + Math.ceil(48 / 8) + 1);
  expect(maxHeld).toBeGreaterThan(slab);
});

test('tiles arriving out of order (concurrent slow reads) stitch to the same image', async () => {
  const shape: Shape = [50, 61];
  const image = randomImage(shape, 5);
  const reader = reflectedRegionReader(image, shape);
  const rng = new Rng(9);
  const delays = new Map<number, number>();
  const arrivalOrder: number[] = [];
  const out = new Float32Array(image.length);
  await lastValueFrom(
    of({ shape }).pipe(
      tileGrid({ sizeMultiple: 4, receptiveRadius: 4, tileShape: [8, 8], blendWidth: 4 }),
      predictTiles({
        model: identity,
        concurrency: 6,
        readRegion: (spec: TileSpec) => {
          delays.set(spec.ordinal, rng.int(8));
          return lastValueFrom(timer(delays.get(spec.ordinal)!).pipe(map(() => reader(spec))));
        },
      }),
      tap((tile) => arrivalOrder.push(tile.spec.ordinal)),
      stitchWithBlending(),
      mergeMap((block) => from([block])),
      tap((block) => {
        const [oy, ox] = block.region.origin;
        const [hy, hx] = block.region.shape;
        for (let y = 0; y < hy; y++) out.set(block.data.subarray(y * hx, (y + 1) * hx), (oy + y) * 61 + ox);
      }),
    ),
  );
  expect(arrivalOrder.some((ordinal, i) => ordinal !== i)).toBe(true);
  expect(maxAbsDiff(out, image)).toBeLessThan(1e-5);
});

test('stitcher reports missing tiles instead of completing silently', async () => {
  const shape: Shape = [20, 20];
  const image = randomImage(shape, 2);
  const run = lastValueFrom(
    of({ shape }).pipe(
      tileGrid({ sizeMultiple: 4, receptiveRadius: 2, tileShape: [8, 8] }),
      predictTiles({ model: identity, readRegion: reflectedRegionReader(image, shape) }),
      // Drop one tile.
      mergeMap((tile) => (tile.spec.ordinal === 4 ? [] : [tile])),
      stitchWithBlending(),
    ),
  );
  await expect(run).rejects.toThrow(/missing tiles/);
});
