import { describe, expect, it } from 'vitest';
import { InputError } from '../core/errors.js';
import { Rng } from '../core/rng.js';
import type { Shape, Volume } from '../core/volume.js';
import { voxelCount } from '../core/volume.js';
import { augmentPatch, dihedralCount, dihedralTransform, inverseDihedralTransform } from '../models/augment.js';
import { randomPatch } from '../models/patches.js';

const indexPatch = (shape: Shape): Float32Array => Float32Array.from({ length: voxelCount(shape) }, (_, i) => i);

/** Naive reference rotations and flips of one [ny, nx] plane, written as coordinate maps. */
function referenceImages(plane: Float32Array, n: number): Float32Array[] {
  const at = (y: number, x: number): number => plane[y * n + x];
  const make = (f: (y: number, x: number) => number): Float32Array => Float32Array.from({ length: n * n }, (_, i) => f(Math.floor(i / n), i % n));
  const rotations = [
    make((y, x) => at(y, x)),
    make((y, x) => at(x, n - 1 - y)), // 90 degrees
    make((y, x) => at(n - 1 - y, n - 1 - x)), // 180
    make((y, x) => at(n - 1 - x, y)), // 270
  ];
  const flipped = rotations.map((r) => make((y, x) => r[y * n + (n - 1 - x)]));
  return [...rotations, ...flipped];
}

describe('dihedral transforms', () => {
  for (const shape of [
    [5, 5],
    [3, 4, 4],
  ] as Shape[]) {
    it(`[${shape.join('x')}]: 8 distinct bijections, the full dihedral group of each YX plane, inverses undo them`, () => {
      const patch = indexPatch(shape);
      const [ny, nx] = shape.slice(-2);
      const plane = ny * nx;
      const outputs = new Set<string>();
      for (let k = 0; k < dihedralCount; k++) {
        const out = dihedralTransform(patch, shape, k);
        expect(out.length).toBe(patch.length);
        // Bijection within each plane: every index of the plane appears exactly once, Z never mixes.
        for (let s = 0; s < patch.length / plane; s++) {
          const slice = Array.from(out.subarray(s * plane, (s + 1) * plane)).sort((a, b) => a - b);
          expect(slice).toEqual(Array.from({ length: plane }, (_, i) => s * plane + i));
        }
        outputs.add(Array.from(out).join(','));
        expect(Array.from(inverseDihedralTransform(out, shape, k))).toEqual(Array.from(patch));
        expect(Array.from(dihedralTransform(inverseDihedralTransform(patch, shape, k), shape, k))).toEqual(Array.from(patch));
      }
      expect(outputs.size).toBe(8);
      // The 8 outputs are exactly the 4 rotations and their mirror images.
      const reference = new Set(referenceImages(patch.subarray(0, plane), nx).map((r) => Array.from(r).join(',')));
      const firstPlanes = new Set([...Array(8).keys()].map((k) => Array.from(dihedralTransform(patch, shape, k).subarray(0, plane)).join(',')));
      expect(firstPlanes).toEqual(reference);
    });
  }

  it('non-square planes: flips work, axis swaps are refused', () => {
    const shape: Shape = [3, 5];
    const patch = indexPatch(shape);
    for (let k = 0; k < 4; k++) expect(Array.from(inverseDihedralTransform(dihedralTransform(patch, shape, k), shape, k))).toEqual(Array.from(patch));
    expect(() => dihedralTransform(patch, shape, 5)).toThrow(RangeError);
    expect(() => dihedralTransform(patch, shape, 8)).toThrow(RangeError);
  });
});

describe('augmentPatch', () => {
  it('draws every one of the 8 transforms with the rng, roughly evenly; non-square draws only flips', () => {
    const shape: Shape = [4, 4];
    const patch = indexPatch(shape);
    const byOutput = new Map<string, number>();
    for (let k = 0; k < 8; k++) byOutput.set(Array.from(dihedralTransform(patch, shape, k)).join(','), 0);
    const rng = new Rng(3);
    const draws = 4000;
    for (let i = 0; i < draws; i++) {
      const key = Array.from(augmentPatch(patch, shape, rng)).join(',');
      expect(byOutput.has(key)).toBe(true);
      byOutput.set(key, byOutput.get(key)! + 1);
    }
    for (const n of byOutput.values()) expect(Math.abs(n / (draws / 8) - 1)).toBeLessThan(0.15);
    const wide: Shape = [2, 3, 5];
    const widePatch = indexPatch(wide);
    const seen = new Set<string>();
    for (let i = 0; i < 200; i++) seen.add(Array.from(augmentPatch(widePatch, wide, rng)).join(','));
    expect(seen.size).toBe(4);
  });
});

describe('randomPatch', () => {
  const volume = (shape: Shape): Volume => ({ data: indexPatch(shape), shape, sampleType: 'float32' });

  it('2D and 3D: a contiguous block of the volume, positions cover every corner placement', () => {
    for (const [vShape, pShape] of [
      [
        [7, 9],
        [3, 4],
      ],
      [
        [4, 6, 5],
        [2, 3, 3],
      ],
    ] as [Shape, Shape][]) {
      const v = volume(vShape);
      const rng = new Rng(8);
      const corners = new Set<number>();
      const [vz, vy, vx] = vShape.length === 3 ? vShape : [1, ...vShape];
      const [pz, py, px] = pShape.length === 3 ? pShape : [1, ...pShape];
      for (let i = 0; i < 500; i++) {
        const p = randomPatch(v, pShape, rng);
        expect(p.length).toBe(voxelCount(pShape));
        const corner = p[0];
        corners.add(corner);
        // Each value is the volume index of its position: consecutive along X, stride vx along Y, vy*vx along Z.
        for (let z = 0; z < pz; z++)
          for (let y = 0; y < py; y++)
            for (let x = 0; x < px; x++) expect(p[(z * py + y) * px + x]).toBe(corner + (z * vy + y) * vx + x);
      }
      expect(corners.size).toBe((vz - pz + 1) * (vy - py + 1) * (vx - px + 1));
    }
  });

  it('patch as large as the volume returns the volume; too small or wrong rank is an InputError naming the volume', () => {
    const v = volume([4, 5]);
    expect(Array.from(randomPatch(v, [4, 5], new Rng(1)))).toEqual(Array.from(v.data));
    expect(() => randomPatch(v, [5, 5], new Rng(1), 'cells.tif')).toThrow(InputError);
    expect(() => randomPatch(v, [5, 5], new Rng(1), 'cells.tif')).toThrow(/cells\.tif/);
    expect(() => randomPatch(v, [1, 4, 5], new Rng(1))).toThrow(InputError);
  });
});
