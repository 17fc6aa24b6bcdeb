import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import '@tensorflow/tfjs-backend-wasm';
import type * as tfl from '@tensorflow/tfjs-layers';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { registerWasmTrainingKernels } from '../backend/kernels/index.js';
import { Rng } from '../core/rng.js';
import type { Shape } from '../core/volume.js';
import { voxelCount } from '../core/volume.js';
import { buildUNet, defaultUNetConfig, unetGeometry, type UNetConfig } from '../models/unet.js';
import { dihedralTransforms, predictDihedralMean } from '../models/tta.js';
import { TILE_BUDGET_BYTES, estimateBytesPerVoxel, planTiles, predictVolume } from '../pipeline/predict.js';
import { maxRelativeError } from './fixtures/relativeError.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

function randomImage(shape: Shape, seed: number): Float32Array {
  const rng = new Rng(seed);
  return Float32Array.from({ length: voxelCount(shape) }, () => rng.normal());
}

function std(values: Float32Array): number {
  const mean = values.reduce((s, v) => s + v, 0) / values.length;
  return Math.sqrt(values.reduce((s, v) => s + (v - mean) ** 2, 0) / values.length);
}

/**
 * The canonical prediction written out directly, independent of the tiling code: reflect-pad
 * (mirror sequence built by walking back and forth) by roundUp(r, m) before and up to a multiple
 * of m with at least r after, run the whole padded image, crop.
 */
function referencePrediction(model: tfl.LayersModel, image: Float32Array, shape: Shape, r: number, m: number): Float32Array {
  const before = Math.ceil(r / m) * m;
  const padded = shape.map((n) => Math.ceil((n + before + r) / m) * m);
  const mirror = (n: number): number[] => {
    // ... 2 1 | 0 1 2 ... n-1 | n-2 ... : index `before + i` holds sample i.
    const walk: number[] = [];
    let position = 0;
    let step = 1;
    for (let i = 0; i < before + 4 * Math.max(...padded); i++) {
      walk.push(position);
      if (n > 1 && (position + step < 0 || position + step >= n)) step = -step;
      if (n > 1) position += step;
    }
    const backwards: number[] = [];
    position = 0;
    step = -1;
    for (let i = 0; i < before; i++) {
      if (n > 1 && (position + step < 0 || position + step >= n)) step = -step;
      if (n > 1) position += step;
      backwards.unshift(position);
    }
    return [...backwards, ...walk];
  };
  const maps = shape.map((n, axis) => mirror(n).slice(0, padded[axis]));
  const shape3 = shape.length === 2 ? [1, ...shape] : [...shape];
  const maps3 = shape.length === 2 ? [[0], ...maps] : maps;
  const paddedData = new Float32Array(voxelCount(padded));
  let o = 0;
  for (const z of maps3[0]) for (const y of maps3[1]) for (const x of maps3[2]) paddedData[o++] = image[(z * shape3[1] + y) * shape3[2] + x];
  return tf.tidy(() => {
    const y = model.predict(tf.tensor(paddedData, [1, ...padded, 1])) as tf.Tensor;
    const begin = [0, ...shape.map(() => before), 0];
    return tf.slice(y, begin, [1, ...shape, 1]).dataSync() as Float32Array;
  });
}

/**
 * An untrained U-Net of `dims` whose output is far from constant: glorot's larger weights (with
 * PyTorch's initialisation, the default, a random n2v2 with batch norm gives a std of 5e-5), so the
 * equalities below compare real signals.
 */
const untrainedUNet = (dims: 2 | 3): UNetConfig => ({ ...defaultUNetConfig(dims), init: 'glorot' });

async function checkTiledEqualsWhole(cfg: UNetConfig, shape: Shape, tileShape: number[], batchSize: number): Promise<void> {
  const model = buildUNet(cfg, 11);
  const { sizeMultiple, receptiveRadius } = unetGeometry(cfg);
  const image = randomImage(shape, 3);
  const opts = { sizeMultiple, receptiveRadius, tileShape, batchSize };
  const plan = planTiles(shape, opts);
  expect(plan.tileCount).toBeGreaterThanOrEqual(2 ** shape.length);
  expect(plan.grid.every((g) => g >= 2)).toBe(true);
  const whole = await predictVolume(model, image, shape, { sizeMultiple, receptiveRadius, maxTileVoxels: 1e9 });
  const before = tf.memory().numTensors;
  const tiled = await predictVolume(model, image, shape, opts);
  expect(tf.memory().numTensors).toBe(before);
  const reference = referencePrediction(model, image, shape, receptiveRadius, sizeMultiple);
  expect(std(reference)).toBeGreaterThan(1e-3); // a real, non-constant prediction
  console.log(
    `${cfg.dims}D ${cfg.variant} [${shape.join('x')}] in ${plan.tileCount} tiles: ` +
      `whole vs reference ${maxRelativeError(whole, reference).toExponential(1)}, tiled vs whole ${maxRelativeError(tiled, whole).toExponential(1)}`,
  );
  expect(maxRelativeError(whole, reference)).toBeLessThan(1e-4);
  expect(maxRelativeError(tiled, whole)).toBeLessThan(1e-4);
  model.dispose();
}

describe('2D U-Nets (cpu backend): tiled prediction equals whole-image prediction', () => {
  for (const variant of ['n2v', 'n2v2'] as const) {
    test(`${variant}, depth 2, batch norm, 70x83 in 24x28 tiles`, async () => {
      await checkTiledEqualsWhole({ ...untrainedUNet(2), filters: 4, variant }, [70, 83], [24, 28], 3);
    });
  }

  test('a margin below the receptive radius breaks exactness (the check above can fail)', async () => {
    const cfg: UNetConfig = { ...untrainedUNet(2), filters: 4 };
    const model = buildUNet(cfg, 11);
    const { sizeMultiple, receptiveRadius } = unetGeometry(cfg);
    const shape: Shape = [70, 83];
    const image = randomImage(shape, 3);
    const whole = await predictVolume(model, image, shape, { sizeMultiple, receptiveRadius, maxTileVoxels: 1e9 });
    const short = await predictVolume(model, image, shape, { sizeMultiple, receptiveRadius, margin: 4, blendWidth: 0, tileShape: [16, 20] });
    console.log(`margin 4 < receptive radius ${receptiveRadius}: tiled vs whole ${maxRelativeError(short, whole).toExponential(1)}`);
    expect(maxRelativeError(short, whole)).toBeGreaterThan(1e-3);
    model.dispose();
  });
});

describe('3D U-Nets (wasm backend with the project Conv3D kernel): tiled prediction equals whole-volume prediction', () => {
  // The cpu backend's Conv3D takes 12-22 s per tile of this size; the wasm one about 1 s.
  beforeAll(async () => {
    await tf.setBackend('wasm');
    registerWasmTrainingKernels();
  });
  afterAll(async () => {
    await tf.setBackend('cpu');
  });
  for (const variant of ['n2v', 'n2v2'] as const) {
    test(`${variant}, depth 2, batch norm, 12x37x41 in 8x20x24 tiles`, async () => {
      await checkTiledEqualsWhole({ ...untrainedUNet(3), filters: 2, variant }, [12, 37, 41], [8, 20, 24], 2);
    });
  }
});

/** Plain-JS dihedral group on a [Y, X] array: rot90 (numpy's, counter-clockwise) and left-right mirror. */
function rot90(data: Float32Array, [ny, nx]: [number, number]): { data: Float32Array; shape: [number, number] } {
  const out = new Float32Array(data.length);
  // numpy: rot90(a)[i, j] = a[j, nx - 1 - i], shape [nx, ny]
  for (let i = 0; i < nx; i++) for (let j = 0; j < ny; j++) out[i * ny + j] = data[j * nx + (nx - 1 - i)];
  return { data: out, shape: [nx, ny] };
}
function mirrorX(data: Float32Array, [ny, nx]: [number, number]): Float32Array {
  const out = new Float32Array(data.length);
  for (let y = 0; y < ny; y++) for (let x = 0; x < nx; x++) out[y * nx + x] = data[y * nx + nx - 1 - x];
  return out;
}

describe('test-time augmentation', () => {
  test('the 8 tensor transforms are distinct and each inverse undoes its forward', () => {
    const x = tf.tensor(randomImage([2, 6, 10], 1), [2, 6, 10, 1]);
    const seen = new Set<string>();
    for (const t of dihedralTransforms()) {
      const forward = t.forward(x);
      const back = t.inverse(forward);
      expect(back.shape).toEqual(x.shape);
      expect(tf.max(tf.abs(tf.sub(back, x))).dataSync()[0]).toBe(0);
      seen.add(`${forward.shape.join()}:${Array.from(forward.dataSync().slice(0, 12)).join()}`);
      tf.dispose([forward, back]);
    }
    expect(seen.size).toBe(8);
    x.dispose();
  });

  test('for a random U-Net, TTA equals the plain-JS average over rot90/mirror of its predictions', () => {
    const model = buildUNet({ ...untrainedUNet(2), filters: 4, variant: 'n2v2' }, 5);
    const shape: [number, number] = [24, 32];
    const image = randomImage(shape, 8);
    const predict2D = (data: Float32Array, s: [number, number]): Float32Array =>
      tf.tidy(() => (model.predict(tf.tensor(data, [1, ...s, 1])) as tf.Tensor).dataSync() as Float32Array);
    const manual = new Float32Array(image.length);
    for (const mirrored of [false, true]) {
      let current = { data: mirrored ? mirrorX(image, shape) : image, shape };
      for (let turns = 0; turns < 4; turns++) {
        let restored = { data: predict2D(current.data, current.shape), shape: current.shape };
        for (let back = turns; back % 4 !== 0; back++) restored = rot90(restored.data, restored.shape); // (4 - turns) more turns
        const original = mirrored ? mirrorX(restored.data, shape) : restored.data;
        for (let i = 0; i < manual.length; i++) manual[i] += original[i] / 8;
        current = rot90(current.data, current.shape);
      }
    }
    const before = tf.memory().numTensors;
    const tta = tf.tidy(() => predictDihedralMean((x) => model.predict(x) as tf.Tensor, tf.tensor(image, [1, ...shape, 1])).dataSync() as Float32Array);
    expect(tf.memory().numTensors).toBe(before);
    expect(maxRelativeError(tta, manual)).toBeLessThan(1e-5);
    expect(maxRelativeError(predict2D(image, shape), manual)).toBeGreaterThan(1e-3); // TTA really changes a random U-Net's output
    model.dispose();
  });

  test('tiled TTA equals whole-image TTA for a U-Net (flipped tiles stay on the pooling grid)', async () => {
    const cfg: UNetConfig = { ...untrainedUNet(2), filters: 4 };
    const model = buildUNet(cfg, 2);
    const { sizeMultiple, receptiveRadius } = unetGeometry(cfg);
    const shape: Shape = [37, 45];
    const image = randomImage(shape, 4);
    const whole = await predictVolume(model, image, shape, { sizeMultiple, receptiveRadius, maxTileVoxels: 1e9, tta: true });
    const tiled = await predictVolume(model, image, shape, { sizeMultiple, receptiveRadius, tileShape: [20, 24], tta: true, batchSize: 2 });
    expect(maxRelativeError(tiled, whole)).toBeLessThan(1e-4);
    model.dispose();
  });

  test('3D TTA transforms Y and X only: a model that is asymmetric in Z but YX-equivariant is unchanged', async () => {
    // y[z] = 2 x[z] - x[z+1] (last plane: 2 x): not symmetric under a Z flip, commutes with every YX transform.
    const zAsymmetric = (x: tf.Tensor): tf.Tensor =>
      tf.tidy(() => {
        const depth = x.shape[1]!;
        const next = tf.concat([tf.slice(x, [0, 1, 0, 0, 0], [-1, depth - 1, -1, -1, -1]), tf.zerosLike(tf.slice(x, [0, 0, 0, 0, 0], [-1, 1, -1, -1, -1]))], 1);
        return tf.sub(tf.mul(x, 2), next);
      });
    const shape: Shape = [8, 13, 17];
    const image = randomImage(shape, 6);
    const opts = { sizeMultiple: 4, receptiveRadius: 1, tileShape: [4, 8, 8] };
    const plain = await predictVolume(zAsymmetric, image, shape, opts);
    const tta = await predictVolume(zAsymmetric, image, shape, { ...opts, tta: true });
    expect(maxRelativeError(tta, plain)).toBeLessThan(1e-6);
    // A Z flip would change it: compare with the Z-flipped model output.
    const flippedInZ = tf.tidy(() => {
      const x = tf.reverse(tf.tensor(image, [1, ...shape, 1]), 1);
      return tf.reverse(zAsymmetric(x), 1).dataSync() as Float32Array;
    });
    expect(maxRelativeError(flippedInZ, plain)).toBeGreaterThan(0.1);
  });
});

describe('tile size from a memory bound', () => {
  test('bytes-per-voxel estimate bounds the measured peak of a default 2D U-Net forward pass', async () => {
    const cfg = defaultUNetConfig(2);
    const model = buildUNet(cfg, 1);
    const { sizeMultiple } = unetGeometry(cfg);
    const estimate = estimateBytesPerVoxel(model, 2, sizeMultiple);
    const side = 64;
    const x = tf.zeros([1, side, side, 1]);
    const profile = await tf.profile(() => model.predict(x) as tf.Tensor);
    const measured = profile.peakBytes / (side * side);
    console.log(`2D default U-Net: estimated ${estimate.toFixed(0)} B/voxel, measured peak ${measured.toFixed(0)} B/voxel`);
    expect(estimate).toBeGreaterThanOrEqual(measured);
    expect(estimate).toBeLessThan(4 * measured); // an upper bound, not a wild one
    // Default tile: the padded tile fits the byte budget.
    const maxTileVoxels = Math.floor(TILE_BUDGET_BYTES / estimate);
    const plan = planTiles([20_000, 30_000], { ...unetGeometry(cfg), maxTileVoxels });
    expect(plan.tileVoxels * estimate).toBeLessThanOrEqual(TILE_BUDGET_BYTES);
    expect(plan.tileVoxels).toBeGreaterThan(maxTileVoxels / 2); // and uses most of it
    tf.dispose(x);
    model.dispose();
  });

  test('a function model gets the default estimate; the whole image runs in one call when it fits', async () => {
    const identity = (x: tf.Tensor): tf.Tensor => x.clone();
    expect(estimateBytesPerVoxel(identity, 2, 4)).toBe(4096);
    const calls: number[][] = [];
    const spy = (x: tf.Tensor): tf.Tensor => {
      calls.push(x.shape);
      return x.clone();
    };
    const image = randomImage([70, 83], 1);
    const out = await predictVolume(spy, image, [70, 83], { sizeMultiple: 4, receptiveRadius: 23 });
    expect(calls).toEqual([[1, 72 + 48, 84 + 48, 1]]);
    expect(maxRelativeError(out, image)).toBe(0);
  });

  test('a receptive field whose smallest exact tile exceeds 4x the budget is refused before any model call', async () => {
    let called = 0;
    const spy = (x: tf.Tensor): tf.Tensor => {
      called++;
      return x.clone();
    };
    // 4 KiB/voxel (the default estimate) and radius 75 in 3D: at least 151^3 voxels = 13 GiB.
    await expect(predictVolume(spy, randomImage([8, 48, 48], 2), [8, 48, 48], { sizeMultiple: 8, receptiveRadius: 75 })).rejects.toThrow(
      /receptive radius \(75 voxels\).*GiB.*--depth/,
    );
    expect(called).toBe(0);
    // The same image with a U-Net-sized field runs.
    await predictVolume(spy, randomImage([8, 48, 48], 2), [8, 48, 48], { sizeMultiple: 4, receptiveRadius: 23 });
    expect(called).toBeGreaterThan(0);
  });
});
