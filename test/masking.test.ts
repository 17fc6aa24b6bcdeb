import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
// tfjs-layers registers the gradients of tfjs-core's ops.
import '@tensorflow/tfjs-layers';
import { beforeAll, describe, expect, it } from 'vitest';
import { Rng } from '../core/rng.js';
import type { Shape } from '../core/volume.js';
import { voxelCount } from '../core/volume.js';
import { maskedLoss } from '../models/losses.js';
import { maskPatch, stratificationBoxSide, stratificationBounds, stratifiedGrid, type MaskOptions, type ReplacementStrategy } from '../models/masking.js';

/** Patch whose value at each pixel is its flat index, so a replacement value tells where it was taken from. */
function indexPatch(shape: Shape): Float32Array {
  return Float32Array.from({ length: voxelCount(shape) }, (_, i) => i);
}

function randomPatch(shape: Shape, rng: Rng): Float32Array {
  return Float32Array.from({ length: voxelCount(shape) }, () => rng.normal());
}

/** [z, y, x] of a flat index (z = 0 in 2D). */
function coordinates(index: number, shape: Shape): [number, number, number] {
  const [nz, ny, nx] = shape.length === 3 ? shape : [1, shape[0], shape[1]];
  void nz;
  return [Math.floor(index / (ny * nx)), Math.floor(index / nx) % ny, index % nx];
}

function maskedIndices(mask: Float32Array): number[] {
  const out: number[] = [];
  mask.forEach((v, i) => {
    if (v === 1) out.push(i);
  });
  return out;
}

const shapes: { name: string; shape: Shape }[] = [
  { name: '2D', shape: [64, 48] },
  { name: '3D', shape: [16, 32, 24] },
];

describe('maskPatch basics', () => {
  for (const { name, shape } of shapes) {
    it(`${name}: mask is 0/1, count matches, unmasked pixels are untouched, same seed same result`, () => {
      const patch = randomPatch(shape, new Rng(1));
      const opts: MaskOptions = { fraction: 0.015, strategy: 'uniform-without-centre', radius: 2 };
      const a = maskPatch(patch, shape, opts, new Rng(5));
      const b = maskPatch(patch, shape, opts, new Rng(5));
      expect(Array.from(b.input)).toEqual(Array.from(a.input));
      expect(Array.from(b.mask)).toEqual(Array.from(a.mask));
      expect(a.mask.every((v) => v === 0 || v === 1)).toBe(true);
      expect(a.count).toBe(maskedIndices(a.mask).length);
      expect(a.count).toBeGreaterThan(0);
      for (let i = 0; i < patch.length; i++) if (a.mask[i] === 0) expect(a.input[i]).toBe(patch[i]);
      // The input patch itself is not modified.
      expect(Array.from(patch)).toEqual(Array.from(randomPatch(shape, new Rng(1))));
      const c = maskPatch(patch, shape, opts, new Rng(6));
      expect(Array.from(c.mask)).not.toEqual(Array.from(a.mask));
    });
  }

  it('rejects inconsistent arguments', () => {
    const patch = new Float32Array(16);
    const opts: MaskOptions = { fraction: 0.1, strategy: 'median', radius: 2 };
    expect(() => maskPatch(patch, [4, 5], opts, new Rng(1))).toThrow(RangeError);
    expect(() => maskPatch(patch, [4, 4], { ...opts, fraction: 0 }, new Rng(1))).toThrow(RangeError);
    expect(() => maskPatch(patch, [4, 4], { ...opts, radius: 0 }, new Rng(1))).toThrow(RangeError);
  });
});

describe('masked fraction and stratification', () => {
  const cases: { name: string; shape: Shape; fraction: number; patches: number }[] = [
    { name: '2D 0.015', shape: [64, 64], fraction: 0.015, patches: 300 },
    { name: '2D 0.002 (n2v default), non-square', shape: [96, 64], fraction: 0.002, patches: 600 },
    { name: '3D 0.015', shape: [16, 32, 32], fraction: 0.015, patches: 150 },
    { name: '3D 0.05, odd sizes', shape: [9, 21, 27], fraction: 0.05, patches: 300 },
  ];
  for (const { name, shape, fraction, patches } of cases) {
    it(`${name}: mean fraction within 3% of requested; one pixel per full box, at most one per cut box`, () => {
      const dims = shape.length;
      const side = stratificationBoxSide(fraction, dims);
      const rng = new Rng(11);
      const patch = new Float32Array(voxelCount(shape));
      let total = 0;
      let cutBoxes = 0;
      for (let p = 0; p < patches; p++) {
        // The grid maskPatch will draw: its first draws from the same rng state.
        const copy = new Rng(0);
        copy.setState(rng.getState());
        const grid = stratifiedGrid(shape, fraction, copy);
        for (let a = 0; a < dims; a++) {
          const bounds = grid[a];
          expect(bounds[0]).toBeLessThanOrEqual(0);
          expect(bounds[1]).toBeGreaterThan(0);
          expect(bounds[bounds.length - 1]).toBeGreaterThanOrEqual(shape[a]);
          expect(bounds[bounds.length - 2]).toBeLessThan(shape[a]);
          for (let i = 0; i + 1 < bounds.length; i++) {
            expect(bounds[i + 1] - bounds[i]).toBeGreaterThanOrEqual(Math.floor(side));
            expect(bounds[i + 1] - bounds[i]).toBeLessThanOrEqual(Math.ceil(side));
          }
        }
        const boxCounts = grid.map((b) => b.length - 1);
        const boxOf = shape.map((length, a) => {
          const box = new Int32Array(length);
          for (let i = 0; i + 1 < grid[a].length; i++) for (let c = Math.max(0, grid[a][i]); c < Math.min(length, grid[a][i + 1]); c++) box[c] = i;
          return box;
        });
        const { mask, count } = maskPatch(patch, shape, { fraction, strategy: 'uniform-with-centre', radius: 2 }, rng);
        total += count;
        const perBox = new Int32Array(boxCounts.reduce((a, b) => a * b, 1));
        for (const index of maskedIndices(mask)) {
          const [z, y, x] = coordinates(index, shape);
          const coords = dims === 3 ? [z, y, x] : [y, x];
          let box = 0;
          for (let a = 0; a < dims; a++) box = box * boxCounts[a] + boxOf[a][coords[a]];
          perBox[box]++;
        }
        for (let box = 0; box < perBox.length; box++) {
          expect(perBox[box]).toBeLessThanOrEqual(1);
          let rest = box;
          let full = true;
          for (let a = dims - 1; a >= 0; a--) {
            const i = rest % boxCounts[a];
            full &&= grid[a][i] >= 0 && grid[a][i + 1] <= shape[a];
            rest = Math.floor(rest / boxCounts[a]);
          }
          if (full) expect(perBox[box]).toBe(1);
          else cutBoxes++;
        }
      }
      expect(cutBoxes).toBeGreaterThan(0);
      const measured = total / (patches * voxelCount(shape));
      expect(Math.abs(measured / fraction - 1)).toBeLessThan(0.03);
    });
  }

  it('stratificationBounds: phase shifts the grid, boxes tile the axis', () => {
    expect(stratificationBounds(10, 4, 0)).toEqual([0, 4, 8, 12]);
    expect(stratificationBounds(10, 4, 1)).toEqual([-1, 3, 7, 11]);
    expect(stratificationBounds(10, 2.5, 0)).toEqual([0, 2, 5, 7, 10]);
    expect(stratificationBounds(10, 4, 3.5)).toEqual([0, 4, 8, 12]);
  });

  it('fraction 1 masks every pixel', () => {
    const shape: Shape = [5, 7];
    const { count, mask } = maskPatch(indexPatch(shape), shape, { fraction: 1, strategy: 'uniform-without-centre', radius: 1 }, new Rng(3));
    expect(count).toBe(35);
    expect(mask.every((v) => v === 1)).toBe(true);
  });
});

describe('replacement values', () => {
  const windowOffsets = (radius: number, dims: number): number => (2 * radius + 1) ** dims;

  for (const { name, shape } of [
    { name: '2D', shape: [20, 20] as Shape },
    { name: '3D', shape: [10, 12, 12] as Shape },
  ]) {
    for (const strategy of ['uniform-with-centre', 'uniform-without-centre'] as ReplacementStrategy[]) {
      it(`${name} ${strategy}: value comes from the clipped window; every window offset is drawn${strategy === 'uniform-without-centre' ? ' but the centre' : ''}`, () => {
        const dims = shape.length;
        const radius = 2;
        const patch = indexPatch(shape);
        const rng = new Rng(17);
        const offsetCounts = new Map<string, number>();
        let interiorDraws = 0;
        let centreDraws = 0;
        let borderDraws = 0;
        for (let trial = 0; trial < 400; trial++) {
          // Fraction 1/9 in 2D, 1/8 in 3D: many masked pixels per patch, borders included.
          const { input, mask } = maskPatch(patch, shape, { fraction: dims === 2 ? 1 / 9 : 1 / 8, strategy, radius }, rng);
          for (const index of maskedIndices(mask)) {
            const source = input[index];
            expect(Number.isInteger(source)).toBe(true);
            expect(source).toBeGreaterThanOrEqual(0);
            expect(source).toBeLessThan(patch.length);
            const c = coordinates(index, shape);
            const s = coordinates(source, shape);
            const offset = [s[0] - c[0], s[1] - c[1], s[2] - c[2]];
            for (const o of offset) expect(Math.abs(o)).toBeLessThanOrEqual(radius);
            if (source === index) centreDraws++;
            if (strategy === 'uniform-without-centre') expect(source).not.toBe(index);
            const extent = shape.length === 3 ? shape : [1, shape[0], shape[1]];
            const interior = c.every((v, a) => (dims === 2 && a === 0) || (v >= radius && v < extent[a] - radius));
            if (interior) {
              interiorDraws++;
              const key = offset.join(',');
              offsetCounts.set(key, (offsetCounts.get(key) ?? 0) + 1);
            } else {
              borderDraws++;
            }
          }
        }
        expect(borderDraws).toBeGreaterThan(0);
        const expectedOffsets = windowOffsets(radius, dims) - (strategy === 'uniform-without-centre' ? 1 : 0);
        expect(offsetCounts.size).toBe(expectedOffsets);
        // Roughly uniform over the window: each offset within 35% of its expected count.
        const expectedPerOffset = interiorDraws / expectedOffsets;
        expect(expectedPerOffset).toBeGreaterThan(30);
        for (const n of offsetCounts.values()) expect(Math.abs(n / expectedPerOffset - 1)).toBeLessThan(0.35);
        if (strategy === 'uniform-with-centre') expect(centreDraws).toBeGreaterThan(0);
        else expect(centreDraws).toBe(0);
      });
    }

    it(`${name} median: the median (numpy's, mean of the two middle values) of the clipped window without the centre`, () => {
      const dims = shape.length;
      const radius = 2;
      const rng = new Rng(23);
      let checked = 0;
      let evenWindows = 0;
      for (let trial = 0; trial < 20; trial++) {
        const patch = randomPatch(shape, rng);
        const { input, mask } = maskPatch(patch, shape, { fraction: 0.05, strategy: 'median', radius }, rng);
        const [nz, ny, nx] = shape.length === 3 ? shape : [1, shape[0], shape[1]];
        const zr = dims === 3 ? radius : 0;
        for (const index of maskedIndices(mask)) {
          const [z, y, x] = coordinates(index, shape);
          const values: number[] = [];
          for (let wz = Math.max(0, z - zr); wz <= Math.min(nz - 1, z + zr); wz++)
            for (let wy = Math.max(0, y - radius); wy <= Math.min(ny - 1, y + radius); wy++)
              for (let wx = Math.max(0, x - radius); wx <= Math.min(nx - 1, x + radius); wx++) {
                if (wz === z && wy === y && wx === x) continue;
                values.push(patch[(wz * ny + wy) * nx + wx]);
              }
          values.sort((a, b) => a - b);
          const n = values.length;
          const expected = n % 2 === 1 ? values[(n - 1) / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
          if (n % 2 === 0) evenWindows++;
          expect(input[index]).toBeCloseTo(expected, 5);
          expect(input[index]).not.toBe(patch[index]);
          checked++;
        }
      }
      expect(checked).toBeGreaterThan(50);
      expect(evenWindows).toBeGreaterThan(0);
    });
  }
});

describe('median with ties', () => {
  it('small-integer data (many equal values): still the exact median of the window without the centre', () => {
    const rng = new Rng(5);
    const shape: Shape = [7, 9];
    let checked = 0;
    for (let trial = 0; trial < 200; trial++) {
      const patch = Float32Array.from({ length: 63 }, () => rng.int(4));
      const { input, mask } = maskPatch(patch, shape, { fraction: 0.3, strategy: 'median', radius: 2 }, rng);
      for (const i of maskedIndices(mask)) {
        const y = Math.floor(i / 9);
        const x = i % 9;
        const values: number[] = [];
        for (let wy = Math.max(0, y - 2); wy <= Math.min(6, y + 2); wy++)
          for (let wx = Math.max(0, x - 2); wx <= Math.min(8, x + 2); wx++) if (wy !== y || wx !== x) values.push(patch[wy * 9 + wx]);
        values.sort((a, b) => a - b);
        const n = values.length;
        expect(input[i]).toBe(n % 2 === 1 ? values[(n - 1) / 2] : (values[n / 2 - 1] + values[n / 2]) / 2);
        checked++;
      }
    }
    expect(checked).toBeGreaterThan(1000);
  });
});

describe('maskedLoss', () => {
  beforeAll(async () => {
    await tf.setBackend('cpu');
  });

  it('mse / mae are means over the masked pixels only; the gradient reaches only masked pixels', () => {
    const rng = new Rng(31);
    const shape: Shape = [6, 7];
    const pred = randomPatch(shape, rng);
    const target = randomPatch(shape, rng);
    const { mask, count } = maskPatch(target, shape, { fraction: 0.2, strategy: 'uniform-without-centre', radius: 2 }, rng);
    expect(count).toBeGreaterThan(2);
    let squared = 0;
    let absolute = 0;
    for (let i = 0; i < mask.length; i++) {
      if (mask[i] === 0) continue;
      squared += (pred[i] - target[i]) ** 2;
      absolute += Math.abs(pred[i] - target[i]);
    }
    const t = (a: Float32Array): tf.Tensor => tf.tensor(a, [1, ...shape, 1]);
    const [p, y, m] = [t(pred), t(target), t(mask)];
    const mse = maskedLoss(p, y, m, 'mse');
    const mae = maskedLoss(p, y, m, 'mae');
    expect(mse.shape).toEqual([]);
    expect(mse.dataSync()[0]).toBeCloseTo(squared / count, 5);
    expect(mae.dataSync()[0]).toBeCloseTo(absolute / count, 5);
    const gradient = tf.grad((q: tf.Tensor) => maskedLoss(q, y, m, 'mse'))(p).dataSync();
    for (let i = 0; i < mask.length; i++) {
      if (mask[i] === 0) expect(Math.abs(gradient[i])).toBe(0);
      else expect(gradient[i]).toBeCloseTo((2 * (pred[i] - target[i])) / count, 5);
    }
    const none = maskedLoss(p, y, tf.zerosLike(m), 'mse');
    expect(none.dataSync()[0]).toBe(0);
    tf.dispose([p, y, m, mse, mae, none]);
  });
});
