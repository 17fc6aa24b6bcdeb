/**
 * The architectural blind-spot networks (models/laine19.ts, models/dbsn.ts) and their layers
 * (models/blindspotLayers.ts), on the cpu and wasm backends.
 */
import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';
import '@tensorflow/tfjs-backend-cpu';
import '@tensorflow/tfjs-backend-wasm';
import { describe, expect, it } from 'vitest';
import { expectSaveLoadIdentical } from './fixtures/modelRoundTrip.js';
import { registerWasmTrainingKernels } from '../backend/kernels/index.js';
import { Rng } from '../core/rng.js';
import { CentreMaskedConv, DilatedConv, Orient, ShiftDown, orient } from '../models/blindspotLayers.js';
import { buildDbsn, dbsnGeometry, dbsnLoss, initialLogPredictionVariance, type DbsnConfig } from '../models/dbsn.js';
import { buildLaine19, laine19Geometry, laine19Orientations, type Laine19Config } from '../models/laine19.js';

type Backend = 'cpu' | 'wasm';
const backends: Backend[] = ['cpu', 'wasm'];

async function useBackend(backend: Backend): Promise<void> {
  if (backend === 'wasm') registerWasmTrainingKernels();
  await tf.setBackend(backend);
  await tf.ready();
}

function randomTensor(shape: number[], rng: Rng, offset = 0): tf.Tensor {
  return tf.tensor(Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => offset + rng.normal()), shape);
}

function flatIndex(position: readonly number[], spatial: readonly number[]): number {
  return position.reduce((index, p, a) => index * spatial[a] + p, 0);
}

/**
 * Gradient of one output pixel (all output channels, random positive weights) with respect to the
 * whole input, one batch element per position: batch elements are independent (no batch norm), so
 * one backward pass gives every position's own gradient map.
 */
function pixelGradients(model: tfl.LayersModel, spatial: number[], positions: number[][], seed: number, inputOffset = 0): Float32Array[] {
  const rng = new Rng(seed);
  const channels = model.outputs[0].shape[model.outputs[0].shape.length - 1] as number;
  const plane = spatial.reduce((a, b) => a * b, 1);
  const selection = new Float32Array(positions.length * plane * channels);
  positions.forEach((p, b) => {
    for (let c = 0; c < channels; c++) selection[(b * plane + flatIndex(p, spatial)) * channels + c] = 0.5 + rng.uniform();
  });
  return tf.tidy(() => {
    const x = randomTensor([positions.length, ...spatial, 1], rng, inputOffset);
    const selector = tf.tensor(selection, [positions.length, ...spatial, channels]);
    const gradient = tf.grad((input: tf.Tensor) => tf.sum(tf.mul(model.apply(input) as tf.Tensor, selector)))(x);
    const g = gradient.dataSync() as Float32Array;
    return positions.map((_, b) => g.slice(b * plane, (b + 1) * plane));
  });
}

/** Face neighbours (+-1 along each axis) of `p` that lie inside the image. */
function faceNeighbours(p: number[], spatial: number[]): number[][] {
  const out: number[][] = [];
  for (let a = 0; a < p.length; a++) {
    for (const step of [-1, 1]) {
      const q = p.slice();
      q[a] += step;
      if (q[a] >= 0 && q[a] < spatial[a]) out.push(q);
    }
  }
  return out;
}

/** Largest |offset| (max over axes) from p of an input with a nonzero gradient. */
function gradientExtent(g: Float32Array, p: number[], spatial: number[]): number {
  let extent = 0;
  for (let i = 0; i < g.length; i++) {
    if (g[i] === 0) continue;
    let rest = i;
    for (let a = spatial.length - 1; a >= 0; a--) {
      extent = Math.max(extent, Math.abs((rest % spatial[a]) - p[a]));
      rest = Math.floor(rest / spatial[a]);
    }
  }
  return extent;
}

const tinyLaine = (dims: 2 | 3, outputChannels = 1): Laine19Config => ({ dims, depth: 2, filters: dims === 2 ? 4 : 2, outputChannels });
// Enough channels that no pixel's every ReLU is closed by chance (that would cut a neighbour's path: a true zero gradient).
const tinyDbsn = (dims: 2 | 3, outputChannels = 1): DbsnConfig => ({ dims, filters: dims === 2 ? 16 : 8, blocks: 2, outputChannels });

interface NetCase {
  name: string;
  dims: 2 | 3;
  build: () => tfl.LayersModel;
  radius: number;
  spatial: number[];
  positions: number[][];
}

const positions2d = [
  [8, 8],
  [0, 0],
  [0, 15],
  [15, 3],
  [1, 14],
  [7, 0],
];
const positions3d = [
  [4, 4, 4],
  [0, 0, 0],
  [7, 3, 0],
  [1, 7, 6],
];

const netCases: NetCase[] = [
  { name: 'laine19', dims: 2, build: () => buildLaine19(tinyLaine(2), 1), radius: laine19Geometry(tinyLaine(2)).receptiveRadius, spatial: [16, 16], positions: positions2d },
  { name: 'laine19 (2 channels)', dims: 2, build: () => buildLaine19(tinyLaine(2, 2), 2), radius: laine19Geometry(tinyLaine(2)).receptiveRadius, spatial: [16, 16], positions: positions2d },
  { name: 'laine19', dims: 3, build: () => buildLaine19(tinyLaine(3), 3), radius: laine19Geometry(tinyLaine(3)).receptiveRadius, spatial: [8, 8, 8], positions: positions3d },
  { name: 'dbsn', dims: 2, build: () => buildDbsn(tinyDbsn(2), 4), radius: dbsnGeometry(tinyDbsn(2)).receptiveRadius, spatial: [16, 16], positions: positions2d },
  { name: 'dbsn (2 channels)', dims: 2, build: () => buildDbsn(tinyDbsn(2, 2), 5), radius: dbsnGeometry(tinyDbsn(2)).receptiveRadius, spatial: [16, 16], positions: positions2d },
  { name: 'dbsn', dims: 3, build: () => buildDbsn(tinyDbsn(3), 6), radius: dbsnGeometry(tinyDbsn(3)).receptiveRadius, spatial: [8, 8, 8], positions: positions3d },
];

describe('blind spot: an output pixel has exactly zero gradient with respect to its own input', () => {
  for (const backend of backends) {
    for (const c of netCases) {
      it(`${c.name} ${c.dims}D on ${backend}: zero at the pixel, nonzero at every face neighbour, nothing beyond the receptive radius`, async () => {
        await useBackend(backend);
        const model = c.build();
        const before = tf.memory().numTensors;
        const gradients = pixelGradients(model, c.spatial, c.positions, 11);
        expect(tf.memory().numTensors).toBe(before);
        c.positions.forEach((p, b) => {
          const g = gradients[b];
          expect(g.every(Number.isFinite)).toBe(true);
          // Exactly zero (either sign of zero), not merely small.
          expect(Math.abs(g[flatIndex(p, c.spatial)]), `gradient at its own pixel [${p.join(',')}]`).toBe(0);
          for (const q of faceNeighbours(p, c.spatial)) {
            expect(Math.abs(g[flatIndex(q, c.spatial)]), `gradient at neighbour [${q.join(',')}] of [${p.join(',')}]`).toBeGreaterThan(0);
          }
          expect(gradientExtent(g, p, c.spatial)).toBeLessThanOrEqual(c.radius);
        });
        model.dispose();
      });
    }
  }
});

describe('laine19', () => {
  it('has one branch per direction (4 in 2D, 6 in 3D) sharing one set of weights, and keeps the input size', async () => {
    await useBackend('cpu');
    for (const dims of [2, 3] as const) {
      const cfg = tinyLaine(dims);
      const model = buildLaine19(cfg, 7);
      const branches = laine19Orientations(dims).length;
      expect(branches).toBe(dims === 2 ? 4 : 6);
      // Every branch but the unrotated one is rotated in and back out.
      expect(model.layers.filter((l) => l.getClassName() === 'BlindspotOrient').length).toBe(2 * (branches - 1));
      // A shared layer is called once per branch.
      expect(model.getLayer('branch_enc0_a_conv').inboundNodes.length).toBe(branches);
      expect(model.getLayer('merge_a').getWeights()[0].shape).toEqual([...new Array<number>(dims).fill(1), branches * 2 * cfg.filters, branches * 2 * cfg.filters]);
      const spatial = dims === 2 ? [8, 12] : [4, 8, 12];
      for (const s of spatial) expect(s % laine19Geometry(cfg).sizeMultiple).toBe(0);
      const x = randomTensor([2, ...spatial, 1], new Rng(1));
      const y = model.predict(x) as tf.Tensor;
      expect(y.shape).toEqual([2, ...spatial, 1]);
      tf.dispose([x, y]);
      model.dispose();
    }
  });

  it('geometry: 2^depth size multiple; the radius grows with depth and bounds the measured field', () => {
    const g1 = laine19Geometry({ dims: 2, depth: 1, filters: 1 });
    const g2 = laine19Geometry({ dims: 2, depth: 2, filters: 1 });
    const g5 = laine19Geometry({ dims: 2, depth: 5, filters: 48 });
    expect([g1.sizeMultiple, g2.sizeMultiple, g5.sizeMultiple]).toEqual([2, 4, 32]);
    expect(g1.receptiveRadius).toBeLessThan(g2.receptiveRadius);
    expect(g2.receptiveRadius).toBeLessThan(g5.receptiveRadius);
    expect(g5.receptiveBefore).toBe(g5.receptiveRadius);
    expect(g5.receptiveAfter).toBe(g5.receptiveRadius);
  });

  it('the measured field reaches the traced radius (positive weights keep every leaky ReLU linear; wasm for speed)', async () => {
    await useBackend('wasm');
    const cfg: Laine19Config = { dims: 2, depth: 1, filters: 2 };
    const { receptiveRadius } = laine19Geometry(cfg);
    const size = 2 * receptiveRadius + 8;
    const model = buildLaine19(cfg, 3);
    model.setWeights(model.getWeights().map((w) => tf.tidy(() => tf.add(tf.abs(w), 0.01))));
    // Max pools pick one pixel of each pair: average the support over both pooling phases and many inputs.
    const positions = [
      [size / 2, size / 2],
      [size / 2 + 1, size / 2 + 1],
      [size / 2, size / 2 + 1],
      [size / 2 + 1, size / 2],
    ];
    let extent = 0;
    for (let seed = 0; seed < 3; seed++) {
      const gradients = pixelGradients(model, [size, size], positions, 20 + seed);
      positions.forEach((p, b) => (extent = Math.max(extent, gradientExtent(gradients[b], p, [size, size]))));
    }
    expect(extent).toBe(receptiveRadius);
    model.dispose();
  });
});

describe('dbsn', () => {
  it('the field reaches exactly the computed radius (positive weights), and each branch is blind on its dilation lattice', async () => {
    await useBackend('cpu');
    const cfg: DbsnConfig = { dims: 2, filters: 2, blocks: 2 };
    const { receptiveRadius } = dbsnGeometry(cfg);
    expect(receptiveRadius).toBe(2 + 2 * 3);
    const size = 2 * receptiveRadius + 5;
    const model = buildDbsn(cfg, 9);
    model.setWeights(model.getWeights().map((w) => tf.tidy(() => tf.add(tf.abs(w), 0.01))));
    const p = [receptiveRadius + 2, receptiveRadius + 2];
    // Positive inputs: with positive weights every ReLU is then open.
    const [g] = pixelGradients(model, [size, size], [p], 3, 3);
    expect(gradientExtent(g, p, [size, size])).toBe(receptiveRadius);
    // Offsets on 6 Z^2 (lcm of the dilations 2 and 3) are blind to both branches; (2, 0) is seen by branch 2, (3, 0) by branch 1.
    const at = (dy: number, dx: number): number => g[flatIndex([p[0] + dy, p[1] + dx], [size, size])];
    expect(Math.abs(at(6, 0))).toBe(0);
    expect(Math.abs(at(-6, 6))).toBe(0);
    expect(at(2, 0)).toBeGreaterThan(0);
    expect(at(3, 0)).toBeGreaterThan(0);
    model.dispose();
  });

  it('starts with every residual block the identity and the prediction variance small and constant', async () => {
    await useBackend('wasm');
    const model = buildDbsn({ dims: 2, filters: 8, blocks: 3, outputChannels: 2 }, 12);
    const pointwise = model.layers.filter((l) => /_block\d+_pointwise$/.test(l.name));
    expect(pointwise).toHaveLength(2 * 3);
    for (const l of pointwise) expect(l.getWeights().every((w) => w.dataSync().every((v) => v === 0))).toBe(true);
    const rng = new Rng(13);
    const [mean, logVariance] = tf.tidy(() => tf.split(model.predict(randomTensor([2, 24, 24, 1], rng)) as tf.Tensor, 2, 3).map((t) => t.dataSync()));
    for (const v of logVariance) expect(v).toBeCloseTo(initialLogPredictionVariance, 5);
    // The mean still depends on the input (He-initialised head, branches and tail).
    expect(Math.max(...mean) - Math.min(...mean)).toBeGreaterThan(1e-3);
    model.dispose();
  });

  it('dbsnLoss: the per-pixel formula on a masked batch', async () => {
    await useBackend('cpu');
    const rng = new Rng(5);
    const prediction = randomTensor([2, 4, 4, 2], rng);
    const target = randomTensor([2, 4, 4, 1], rng);
    const mask = tf.tensor(Float32Array.from({ length: 32 }, (_, i) => (i % 3 === 0 ? 1 : 0)), [2, 4, 4, 1]);
    const noiseVariance = (intensity: tf.Tensor): tf.Tensor => tf.add(tf.mul(tf.abs(intensity), 0.1), 0.2);
    const loss = dbsnLoss(noiseVariance)(prediction, target, mask).dataSync()[0];
    const p = prediction.dataSync();
    const t = target.dataSync();
    const m = mask.dataSync();
    let sum = 0;
    let count = 0;
    for (let i = 0; i < 32; i++) {
      if (m[i] === 0) continue;
      const mu = p[2 * i];
      const sigmaMu = Math.exp(p[2 * i + 1]) + 1e-6;
      // The noise variance at the predicted mean (as the posterior uses it), not at the noisy value.
      const sigmaN = 0.1 * Math.abs(mu) + 0.2;
      sum += 0.5 * ((t[i] - mu) ** 2 / (sigmaMu + sigmaN) + Math.log(sigmaN) + sigmaMu / sigmaN);
      count++;
    }
    expect(loss).toBeCloseTo(sum / count, 5);
    tf.dispose([prediction, target, mask]);
  });
});

describe('blind-spot layers', () => {
  /** A dilated kernel written out as a dense one (zeros between the taps): a plain conv with it is the reference. */
  function denseKernel(kernel: tf.Tensor, dims: 2 | 3, dilation: number): tf.Tensor {
    const k = kernel.shape[0];
    const side = (k - 1) * dilation + 1;
    const [cin, cout] = kernel.shape.slice(dims);
    const values = kernel.arraySync() as unknown;
    const dense = new Float32Array(side ** dims * cin * cout);
    const taps = k ** dims;
    for (let t = 0; t < taps; t++) {
      const tap = dims === 2 ? [Math.floor(t / k), t % k] : [Math.floor(t / (k * k)), Math.floor(t / k) % k, t % k];
      const denseIndex = tap.reduce((acc, v) => acc * side + v * dilation, 0);
      let block = values as number[][][];
      for (const v of tap) block = (block as unknown as number[][][][])[v];
      const matrix = block as unknown as number[][];
      for (let i = 0; i < cin; i++) for (let o = 0; o < cout; o++) dense[(denseIndex * cin + i) * cout + o] = matrix[i][o];
    }
    return tf.tensor(dense, [...new Array<number>(dims).fill(side), cin, cout]);
  }

  for (const backend of backends) {
    for (const { dims, shape, dilation } of [
      { dims: 2 as const, shape: [2, 7, 9, 3], dilation: 2 },
      { dims: 2 as const, shape: [1, 8, 10, 2], dilation: 3 },
      { dims: 3 as const, shape: [1, 5, 7, 6, 2], dilation: 2 },
    ]) {
      it(`DilatedConv ${dims}D dilation ${dilation} on ${backend}: output and gradients equal a dense-kernel convolution`, async () => {
        await useBackend(backend);
        const layer = new DilatedConv({ dims, filters: 3, kernelSize: 3, dilation, seed: 1 });
        const rng = new Rng(2);
        const x = randomTensor(shape, rng);
        layer.apply(x);
        const [kernel, bias0] = layer.getWeights();
        const bias = randomTensor(bias0.shape, rng);
        layer.setWeights([kernel, bias]);
        const dense = denseKernel(kernel, dims, dilation);
        const weight = randomTensor([...shape.slice(0, -1), 3], rng);
        const reference = (input: tf.Tensor, k: tf.Tensor): tf.Tensor =>
          tf.add(dims === 2 ? tf.conv2d(input as tf.Tensor4D, k as tf.Tensor4D, 1, 'same') : tf.conv3d(input as tf.Tensor5D, k as tf.Tensor5D, 1, 'same'), bias);
        const ours = layer.apply(x) as tf.Tensor;
        const expected = reference(x, dense);
        expect(ours.shape).toEqual(expected.shape);
        const forwardError = tf.max(tf.abs(tf.sub(ours, expected))).dataSync()[0];
        expect(forwardError).toBeLessThan(1e-5);
        const oursGrad = tf.grad((input: tf.Tensor) => tf.sum(tf.mul(layer.apply(input) as tf.Tensor, weight)))(x);
        const refGrad = tf.grad((input: tf.Tensor) => tf.sum(tf.mul(reference(input, dense), weight)))(x);
        expect(tf.max(tf.abs(tf.sub(oursGrad, refGrad))).dataSync()[0]).toBeLessThan(1e-4);
        // The kernel gradient flows too (Adam needs it): compare the taps of the dense kernel's gradient.
        const kernelGrad = tf.grad((k: tf.Tensor) => tf.sum(tf.mul(reference(x, k), weight)))(dense);
        const ourGrads = tf.variableGrads(() => tf.sum(tf.mul(layer.apply(x) as tf.Tensor, weight)) as tf.Scalar);
        const ourKernelGrad = Object.entries(ourGrads.grads).find(([name]) => name.endsWith('kernel'))?.[1];
        expect(ourKernelGrad).toBeDefined();
        // The dense kernel's gradient is also defined between the taps (weights a dilated conv does not have): compare the taps.
        const taps = denseKernel(tf.onesLike(ourKernelGrad!), dims, dilation);
        const kernelError = tf.max(tf.abs(tf.sub(denseKernel(ourKernelGrad!, dims, dilation), tf.mul(kernelGrad, taps)))).dataSync()[0];
        expect(kernelError).toBeLessThan(1e-3 * Math.max(1, tf.max(tf.abs(kernelGrad)).dataSync()[0]));
        tf.dispose([x, bias, dense, weight, ours, expected, oursGrad, refGrad, kernelGrad, taps, ourGrads.value, ...Object.values(ourGrads.grads)]);
        layer.dispose();
      });
    }
  }

  it('Orient: every orientation is undone by its inverse, and computeOutputShape matches', async () => {
    await useBackend('cpu');
    for (const dims of [2, 3] as const) {
      const shape = dims === 2 ? [2, 3, 5, 2] : [1, 2, 3, 5, 2];
      const x = randomTensor(shape, new Rng(dims));
      for (const { orientation } of laine19Orientations(dims)) {
        const forward = new Orient({ dims, ...orientation, inverse: false });
        const turned = forward.apply(x) as tf.Tensor;
        expect(turned.shape).toEqual(forward.computeOutputShape(shape));
        const back = new Orient({ dims, ...orientation, inverse: true }).apply(turned) as tf.Tensor;
        expect(Array.from(back.dataSync())).toEqual(Array.from(x.dataSync()));
        const direct = orient(x, orientation, false);
        expect(Array.from(direct.dataSync())).toEqual(Array.from(turned.dataSync()));
        tf.dispose([turned, back, direct]);
      }
      x.dispose();
    }
  });

  it('ShiftDown moves rows down on the first spatial axis with zeros in; CentreMaskedConv ignores the centre input', async () => {
    await useBackend('cpu');
    const x = tf.tensor([1, 2, 3, 4, 5, 6], [1, 3, 2, 1]);
    const shifted = new ShiftDown({ shift: 1 }).apply(x) as tf.Tensor;
    expect(Array.from(shifted.dataSync())).toEqual([0, 0, 1, 2, 3, 4]);
    const masked = new CentreMaskedConv({ dims: 2, filters: 2, kernelSize: 3, seed: 4 });
    const impulse = tf.tensor(Float32Array.from({ length: 9 }, (_, i) => (i === 4 ? 1 : 0)), [1, 3, 3, 1]);
    const response = masked.apply(impulse) as tf.Tensor;
    const r = response.dataSync();
    expect([r[8], r[9]]).toEqual([0, 0]);
    expect(Array.from(r).some((v) => v !== 0)).toBe(true);
    tf.dispose([x, shifted, impulse, response]);
    masked.dispose();
  });
});

describe('save and load', () => {
  const cases: { name: string; build: () => tfl.LayersModel; spatial: number[]; classes: string[] }[] = [
    { name: 'laine19 2D', build: () => buildLaine19(tinyLaine(2, 2), 31), spatial: [8, 12], classes: ['BlindspotOrient', 'BlindspotShiftDown', 'BlindspotNearestUpSampling'] },
    { name: 'laine19 3D', build: () => buildLaine19(tinyLaine(3), 32), spatial: [4, 8, 4], classes: ['BlindspotOrient', 'BlindspotShiftDown'] },
    { name: 'dbsn 2D', build: () => buildDbsn(tinyDbsn(2), 33), spatial: [7, 9], classes: ['BlindspotCentreMaskedConv', 'BlindspotDilatedConv'] },
    { name: 'dbsn 3D', build: () => buildDbsn(tinyDbsn(3, 2), 34), spatial: [5, 6, 4], classes: ['BlindspotCentreMaskedConv', 'BlindspotDilatedConv'] },
  ];
  for (const c of cases) {
    it(`${c.name} round-trips through model.json and weights with identical outputs`, async () => {
      await useBackend('cpu');
      const model = c.build();
      const rng = new Rng(35);
      model.setWeights(model.getWeights().map((w) => randomTensor(w.shape, rng)));
      const x = randomTensor([1, ...c.spatial, 1], rng);
      await expectSaveLoadIdentical(model, x, c.classes);
      x.dispose();
      model.dispose();
    });
  }
});

// On wasm, the backend training runs on here: the cpu backend's filter gradient makes even this tiny run take ~30 s.
describe('training smoke test (wasm): a few Adam steps on every pixel lower the loss', () => {
  /** Noisy patches of a smooth image (normalised units). */
  function noisyBatch(batch: number, side: number, rng: Rng): tf.Tensor {
    const values = new Float32Array(batch * side * side);
    for (let b = 0; b < batch; b++) {
      const phase = rng.uniform() * 6;
      for (let i = 0; i < side * side; i++) values[b * side * side + i] = Math.sin(phase + (i % side) / 3) * Math.cos(Math.floor(i / side) / 4) + 0.3 * rng.normal();
    }
    return tf.tensor(values, [batch, side, side, 1]);
  }

  const cases: { name: string; build: () => tfl.LayersModel; loss: (prediction: tf.Tensor, target: tf.Tensor, mask: tf.Tensor) => tf.Scalar }[] = [
    { name: 'laine19 (MSE, 1 channel)', build: () => buildLaine19({ dims: 2, depth: 2, filters: 4 }, 41), loss: (p, t) => tf.mean(tf.square(tf.sub(p, t))) as tf.Scalar },
    { name: 'dbsn (dbsnLoss, 2 channels)', build: () => buildDbsn({ dims: 2, filters: 8, blocks: 1, outputChannels: 2 }, 42), loss: dbsnLoss((y) => tf.fill(y.shape, 0.09)) },
  ];
  for (const c of cases) {
    it(c.name, async () => {
      await useBackend('wasm');
      const model = c.build();
      const optimizer = tf.train.adam(0.01);
      const rng = new Rng(43);
      const x = noisyBatch(4, 16, rng);
      const mask = tf.onesLike(x);
      const losses: number[] = [];
      for (let step = 0; step < 12; step++) {
        const loss = optimizer.minimize(() => c.loss(model.apply(x, { training: true }) as tf.Tensor, x, mask), true) as tf.Scalar;
        losses.push(loss.dataSync()[0]);
        loss.dispose();
      }
      expect(losses.every(Number.isFinite)).toBe(true);
      const first = losses.slice(0, 3).reduce((a, b) => a + b, 0) / 3;
      const last = losses.slice(-3).reduce((a, b) => a + b, 0) / 3;
      expect(last, `losses ${losses.map((l) => l.toFixed(4)).join(' ')}`).toBeLessThan(first);
      console.log(`${c.name}: loss ${losses[0].toFixed(4)} -> ${losses[losses.length - 1].toFixed(4)} in ${losses.length} steps`);
      tf.dispose([x, mask]);
      optimizer.dispose();
      model.dispose();
    });
  }
});
