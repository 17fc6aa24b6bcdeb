/**
 * Method-specific masking and estimates: structN2V structuring elements and masking
 * (models/structMask.ts), Noise2Self grid masking (models/gridMask.ts), Noise2Info's sigma
 * bound and loss (models/noise2info.ts).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import '@tensorflow/tfjs-layers';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InputError, UsageError } from '../core/errors.js';
import { Rng } from '../core/rng.js';
import type { Shape } from '../core/volume.js';
import { voxelCount } from '../core/volume.js';
import { donutMeanAt, gridMaskPatch, gridPhaseCount, gridPhaseForStep, gridPhaseMask, gridPhaseOf } from '../models/gridMask.js';
import { maskPatch, type MaskOptions } from '../models/masking.js';
import { estimateNoise2InfoSigma, initialNoise2InfoSigma, noise2InfoExternalLoss, noise2InfoLoss, updateNoise2InfoSigma } from '../models/noise2info.js';
import { applyStructMask, parseStructMask, structMaskPatch, structureOffsets } from '../models/structMask.js';

let dir = '';
beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'blindspot-masks-'));
  await tf.setBackend('cpu');
  await tf.ready();
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function randomPatch(shape: Shape, rng: Rng): Float32Array {
  return Float32Array.from({ length: voxelCount(shape) }, () => rng.normal());
}

/** A .npy file (format version 1.0) of the given dtype and shape. */
function npyBytes(descr: string, shape: number[], data: Buffer): Buffer {
  let header = `{'descr': '${descr}', 'fortran_order': False, 'shape': (${shape.join(', ')}${shape.length === 1 ? ',' : ''}), }`;
  const unpadded = 10 + header.length + 1;
  header += ' '.repeat((64 - (unpadded % 64)) % 64) + '\n';
  const preamble = Buffer.alloc(10);
  preamble.writeUInt8(0x93, 0);
  preamble.write('NUMPY', 1, 'latin1');
  preamble.writeUInt8(1, 6);
  preamble.writeUInt8(0, 7);
  preamble.writeUInt16LE(header.length, 8);
  return Buffer.concat([preamble, Buffer.from(header, 'latin1'), data]);
}

describe('structuring elements', () => {
  it('lines from horizontal:N, vertical:N, depth:N have the asked shape, centred', () => {
    expect(parseStructMask('horizontal:5', 2).shape).toEqual([1, 5]);
    expect(parseStructMask('vertical:3', 2).shape).toEqual([3, 1]);
    expect(parseStructMask('horizontal:5', 3).shape).toEqual([1, 1, 5]);
    expect(parseStructMask('vertical:7', 3).shape).toEqual([1, 7, 1]);
    expect(parseStructMask('depth:3', 3).shape).toEqual([3, 1, 1]);
    expect(Array.from(parseStructMask('horizontal:5', 2).values)).toEqual([1, 1, 1, 1, 1]);
    // Offsets of the non-centre pixels: [dz, dy, dx] triples.
    expect(Array.from(structureOffsets(parseStructMask('horizontal:5', 2)))).toEqual([0, 0, -2, 0, 0, -1, 0, 0, 1, 0, 0, 2]);
    expect(Array.from(structureOffsets(parseStructMask('vertical:3', 3)))).toEqual([0, -1, 0, 0, 1, 0]);
  });

  it('bad specs are usage errors: even or non-numeric lengths, depth on 2D data', () => {
    expect(() => parseStructMask('horizontal:4', 2)).toThrow(UsageError);
    expect(() => parseStructMask('vertical:x', 2)).toThrow(UsageError);
    expect(() => parseStructMask('horizontal:0', 2)).toThrow(UsageError);
    expect(() => parseStructMask('depth:3', 2)).toThrow(UsageError);
  });

  it('reads JSON, text and .npy mask files in 2D and 3D', () => {
    const cross = [
      [0, 1, 0],
      [1, 1, 1],
      [0, 1, 0],
    ];
    const json = join(dir, 'cross.json');
    writeFileSync(json, JSON.stringify(cross));
    const fromJson = parseStructMask(json, 2);
    expect(fromJson.shape).toEqual([3, 3]);
    expect(Array.from(fromJson.values)).toEqual(cross.flat());
    // A 2D file on 3D data acts within a plane.
    expect(parseStructMask(json, 3).shape).toEqual([1, 3, 3]);

    const text = join(dir, 'line3d.txt');
    writeFileSync(text, '# a 3 x 1 x 5 element\n00100\n\n1 1 1 1 1\n\n00100\n');
    const fromText = parseStructMask(text, 3);
    expect(fromText.shape).toEqual([3, 1, 5]);
    expect(Array.from(fromText.values)).toEqual([0, 0, 1, 0, 0, 1, 1, 1, 1, 1, 0, 0, 1, 0, 0]);

    const npyU8 = join(dir, 'mask.npy');
    writeFileSync(npyU8, npyBytes('|u1', [1, 5], Buffer.from([1, 1, 1, 1, 1])));
    expect(parseStructMask(npyU8, 2).shape).toEqual([1, 5]);
    const f32 = Buffer.alloc(4 * 27);
    for (let i = 0; i < 27; i++) f32.writeFloatLE(i % 2 === 0 ? 1 : 0, 4 * i);
    const npyF32 = join(dir, 'cube.npy');
    writeFileSync(npyF32, npyBytes('<f4', [3, 3, 3], f32));
    const cube = parseStructMask(npyF32, 3);
    expect(cube.shape).toEqual([3, 3, 3]);
    // The centre (index 13, 0 in the file) always belongs to the element: it is the masked pixel.
    expect(Array.from(cube.values)).toEqual(Array.from({ length: 27 }, (_, i) => (i % 2 === 0 || i === 13 ? 1 : 0)));
  });

  it('bad mask files are input errors naming the file', () => {
    const even = join(dir, 'even.json');
    writeFileSync(even, JSON.stringify([[1, 1]]));
    expect(() => parseStructMask(even, 2)).toThrow(InputError);
    const notBinary = join(dir, 'two.json');
    writeFileSync(notBinary, JSON.stringify([[0, 2, 0]]));
    expect(() => parseStructMask(notBinary, 2)).toThrow(/0 or 1/);
    const ragged = join(dir, 'ragged.txt');
    writeFileSync(ragged, '010\n11\n');
    expect(() => parseStructMask(ragged, 2)).toThrow(InputError);
    const cube = join(dir, 'cube.json');
    writeFileSync(cube, JSON.stringify([[[1]], [[1]], [[1]]]));
    expect(() => parseStructMask(cube, 2)).toThrow(/2D images/);
    const missing = join(dir, 'nope.json');
    expect(() => parseStructMask(missing, 2)).toThrow(InputError);
    try {
      parseStructMask(even, 2);
    } catch (err) {
      expect((err as InputError).file).toBe(even);
    }
  });
});

describe('structN2V masking', () => {
  const opts: MaskOptions = { fraction: 0.02, strategy: 'uniform-without-centre', radius: 2 };

  for (const { name, shape, spec } of [
    { name: '2D horizontal:5', shape: [32, 40] as Shape, spec: 'horizontal:5' },
    { name: '3D vertical:3', shape: [6, 16, 12] as Shape, spec: 'vertical:3' },
  ]) {
    it(`${name}: centres as N2V places them, the whole structure replaced by values in the patch range, nothing else touched`, () => {
      const dims = shape.length as 2 | 3;
      const element = parseStructMask(spec, dims);
      const patch = randomPatch(shape, new Rng(1));
      const min = Math.min(...patch);
      const max = Math.max(...patch);
      const { input, mask, count, replaced } = structMaskPatch(patch, shape, element, opts, new Rng(2));
      // Same centres as plain N2V masking with the same random stream.
      expect(Array.from(mask)).toEqual(Array.from(maskPatch(patch, shape, opts, new Rng(2)).mask));
      expect(count).toBeGreaterThan(0);
      const offsets = structureOffsets(element);
      const [nz, ny, nx] = (dims === 3 ? shape : [1, shape[0], shape[1]]) as [number, number, number];
      const expected = new Float32Array(patch.length);
      mask.forEach((m, i) => {
        if (m !== 1) return;
        expected[i] = 1;
        const z = Math.floor(i / (ny * nx));
        const y = Math.floor(i / nx) % ny;
        const x = i % nx;
        for (let o = 0; o < offsets.length; o += 3) {
          const [zz, yy, xx] = [z + offsets[o], y + offsets[o + 1], x + offsets[o + 2]];
          if (zz >= 0 && yy >= 0 && xx >= 0 && zz < nz && yy < ny && xx < nx) expected[(zz * ny + yy) * nx + xx] = 1;
        }
      });
      expect(Array.from(replaced)).toEqual(Array.from(expected));
      for (let i = 0; i < patch.length; i++) {
        if (replaced[i] === 1) {
          expect(input[i]).not.toBe(patch[i]);
          expect(input[i]).toBeGreaterThanOrEqual(min);
          expect(input[i]).toBeLessThan(max);
        } else {
          expect(input[i]).toBe(patch[i]);
        }
      }
    });
  }

  it('the input on the structure does not depend on the original values there (same range)', () => {
    const shape: Shape = [24, 24];
    const element = parseStructMask('horizontal:5', 2);
    const patch = randomPatch(shape, new Rng(3));
    const a = structMaskPatch(patch, shape, element, opts, new Rng(4));
    const min = Math.min(...patch);
    const max = Math.max(...patch);
    const changed = Float32Array.from(patch, (v, i) => (a.replaced[i] === 1 && v !== min && v !== max ? (min + max) / 2 : v));
    const b = structMaskPatch(changed, shape, element, { ...opts, strategy: 'uniform-without-centre' }, new Rng(4));
    expect(Array.from(b.replaced)).toEqual(Array.from(a.replaced));
    expect(Array.from(b.input)).toEqual(Array.from(a.input));
  });

  it('applyStructMask drops structure pixels outside the patch', () => {
    const shape: Shape = [3, 4];
    const input = new Float32Array(12);
    const { replaced, count } = applyStructMask(input, shape, [4], parseStructMask('horizontal:5', 2), [10, 11], new Rng(5));
    // Centre (1, 0): itself and (1, 1), (1, 2); (1, -1) and (1, -2) lie outside.
    expect(Array.from(replaced)).toEqual([0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0]);
    expect(count).toBe(3);
    expect(input[4]).toBeGreaterThanOrEqual(10);
  });
});

describe('Noise2Self grid masking', () => {
  for (const { shape, k } of [
    { shape: [7, 8] as Shape, k: 3 },
    { shape: [3, 5, 4] as Shape, k: 2 },
    { shape: [9, 6] as Shape, k: 4 },
  ]) {
    it(`phases of a ${k}-grid cover every pixel of [${shape.join('x')}] exactly once per cycle`, () => {
      const dims = shape.length as 2 | 3;
      const phases = gridPhaseCount(k, dims);
      expect(phases).toBe(k ** dims);
      const times = new Float32Array(voxelCount(shape));
      for (let cycleStep = 0; cycleStep < phases; cycleStep++) {
        const phase = gridPhaseForStep(phases + cycleStep, k, dims, 7);
        gridPhaseMask(shape, k, phase).forEach((m, i) => (times[i] += m));
      }
      expect(times.every((t) => t === 1)).toBe(true);
    });
  }

  it('each cycle of steps is a permutation of the phases, reproducible from the seed, reshuffled per cycle', () => {
    const phases = gridPhaseCount(3, 2);
    const schedule = (seed: number): number[] => Array.from({ length: 3 * phases }, (_, s) => gridPhaseForStep(s, 3, 2, seed));
    const a = schedule(1);
    for (let c = 0; c < 3; c++) expect([...a.slice(c * phases, (c + 1) * phases)].sort((x, y) => x - y)).toEqual(Array.from({ length: phases }, (_, i) => i));
    expect(schedule(1)).toEqual(a);
    expect(a.slice(0, phases)).not.toEqual(a.slice(phases, 2 * phases));
    expect(schedule(2)).not.toEqual(a);
  });

  it('masked pixels get the donut mean of their in-patch neighbours; the input on the phase is independent of the phase values', () => {
    const shape: Shape = [6, 7];
    const patch = Float32Array.from({ length: 42 }, (_, i) => (i * 7919) % 97);
    const phase = gridPhaseOf([0, 0], 2);
    const { input, mask, count } = gridMaskPatch(patch, shape, 2, phase);
    expect(count).toBe(3 * 4);
    // Corner (0, 0): neighbours (0, 1), (1, 0), (1, 1).
    expect(input[0]).toBeCloseTo((patch[1] + patch[7] + patch[8]) / 3, 5);
    // Interior (2, 2): the 8 neighbours.
    const i22 = 2 * 7 + 2;
    const ring = [-8, -7, -6, -1, 1, 6, 7, 8].map((d) => patch[i22 + d]);
    expect(input[i22]).toBeCloseTo(ring.reduce((a, b) => a + b, 0) / 8, 5);
    expect(donutMeanAt(patch, shape, i22)).toBeCloseTo(input[i22], 6);
    for (let i = 0; i < 42; i++) if (mask[i] === 0) expect(input[i]).toBe(patch[i]);
    // J-invariance: changing the phase's own values leaves the input unchanged.
    const changed = Float32Array.from(patch, (v, i) => (mask[i] === 1 ? v + 100 : v));
    expect(Array.from(gridMaskPatch(changed, shape, 2, phase).input)).toEqual(Array.from(input));
    // 3D: 26 neighbours.
    const shape3: Shape = [3, 3, 3];
    const cube = Float32Array.from({ length: 27 }, (_, i) => i);
    const centre = gridMaskPatch(cube, shape3, 2, gridPhaseOf([1, 1, 1], 2));
    expect(centre.input[13]).toBeCloseTo((351 - 13) / 26, 5);
  });

  it('refuses k < 2 and out-of-range phases', () => {
    expect(() => gridPhaseMask([4, 4], 1, 0)).toThrow(RangeError);
    expect(() => gridPhaseMask([4, 4], 2, 4)).toThrow(RangeError);
  });
});

describe('Noise2Info', () => {
  /** Two smooth clean images, Gaussian noise of known sigma, in normalised units. */
  function knownSigmaData(sigma: number, rng: Rng): { clean: Float32Array[]; noise: Float32Array[] } {
    const side = 128;
    const clean = [0, 1].map((k) => Float32Array.from({ length: side * side }, (_, i) => Math.sin((i % side) / (9 + 4 * k)) * Math.cos(Math.floor(i / side) / 13) + 0.3 * k));
    const noise = clean.map((c) => Float32Array.from(c, () => sigma * rng.normal()));
    return { clean, noise };
  }

  it('the sigma estimate is an upper bound that approaches the true sigma from above as predictions improve, within 10% at the end', () => {
    const sigma = 0.3;
    const rng = new Rng(11);
    const { clean, noise } = knownSigmaData(sigma, rng);
    const noisy = clean.map((c, k) => Float32Array.from(c, (v, i) => v + noise[k][i]));
    let sigmaLoss = initialNoise2InfoSigma;
    const estimates: number[] = [];
    // A network getting better: its error (independent of the noise) shrinks epoch by epoch.
    for (const errorScale of [1.0, 0.6, 0.3, 0.1]) {
      const prediction = clean.map((c) => Float32Array.from(c, (v) => v + errorScale * sigma * rng.normal()));
      const estimate = estimateNoise2InfoSigma(noisy, prediction, { rng: new Rng(12) });
      estimates.push(estimate.sigma);
      expect(estimate.sigma).toBeGreaterThan(sigma);
      expect(estimate.matchedDistance).toBeGreaterThanOrEqual(0);
      expect(estimate.matchedDistance).toBeLessThan(estimate.internalLoss);
      sigmaLoss = updateNoise2InfoSigma(sigmaLoss, estimate.sigma);
    }
    for (let i = 1; i < estimates.length; i++) expect(estimates[i]).toBeLessThan(estimates[i - 1]);
    expect(sigmaLoss).toBe(estimates[estimates.length - 1]);
    expect(Math.abs(sigmaLoss - sigma) / sigma).toBeLessThan(0.1);
  });

  it('a prediction that leaks the noise needs L_ex: with it the bound holds, without it the estimate falls below sigma', () => {
    const sigma = 0.2;
    const rng = new Rng(13);
    const { clean, noise } = knownSigmaData(sigma, rng);
    const noisy = Float32Array.from(clean[0], (v, i) => v + noise[0][i]);
    const leak = 0.3;
    const prediction = Float32Array.from(clean[0], (v, i) => v + leak * noise[0][i]);
    // The masked (J-invariant) prediction cannot see the noise on J.
    const maskedPrediction = clean[0];
    const mask = Float32Array.from(noisy, (_, i) => (i % 7 === 0 ? 1 : 0));
    const externalLoss = noise2InfoExternalLoss(prediction, maskedPrediction, mask);
    expect(externalLoss).toBeCloseTo(leak * sigma, 2);
    const withEx = estimateNoise2InfoSigma(noisy, prediction, { externalLoss, rng: new Rng(14) });
    const withoutEx = estimateNoise2InfoSigma(noisy, prediction, { rng: new Rng(14) });
    expect(withEx.sigma).toBeGreaterThan(sigma);
    expect(withoutEx.sigma).toBeLessThan(sigma);
  });

  it('updateNoise2InfoSigma keeps the minimum and ignores non-finite estimates', () => {
    expect(updateNoise2InfoSigma(1, 0.4)).toBe(0.4);
    expect(updateNoise2InfoSigma(0.4, 0.5)).toBe(0.4);
    expect(updateNoise2InfoSigma(0.4, Number.NaN)).toBe(0.4);
  });

  it('noise2InfoLoss is L_in + 2 sigma L_ex and differentiates through both predictions', () => {
    const rng = new Rng(15);
    const shape = [2, 4, 4, 1];
    const f = tf.tensor(Float32Array.from({ length: 32 }, () => rng.normal()), shape);
    const fMasked = tf.tensor(Float32Array.from({ length: 32 }, () => rng.normal()), shape);
    const x = tf.tensor(Float32Array.from({ length: 32 }, () => rng.normal()), shape);
    const maskValues = Float32Array.from({ length: 32 }, (_, i) => (i % 4 === 1 ? 1 : 0));
    const mask = tf.tensor(maskValues, shape);
    const sigma = 0.25;
    const loss = noise2InfoLoss(f, fMasked, x, mask, sigma).dataSync()[0];
    const fv = f.dataSync() as Float32Array;
    const mv = fMasked.dataSync() as Float32Array;
    const xv = x.dataSync() as Float32Array;
    const lIn = fv.reduce((s, v, i) => s + (v - xv[i]) ** 2, 0) / 32;
    const lEx = noise2InfoExternalLoss(fv, mv, maskValues);
    expect(loss).toBeCloseTo(lIn + 2 * sigma * lEx, 4);
    const [gf, gm] = tf.grads((a: tf.Tensor, b: tf.Tensor) => noise2InfoLoss(a, b, x, mask, sigma))([f, fMasked]);
    const gmValues = gm.dataSync();
    // The masked prediction only enters on J.
    maskValues.forEach((m, i) => expect(gmValues[i] === 0).toBe(m === 0));
    expect(gf.dataSync().every((v) => v !== 0)).toBe(true);
    tf.dispose([f, fMasked, x, mask, gf, gm]);
  });
});
