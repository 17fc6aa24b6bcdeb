import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import * as tfl from '@tensorflow/tfjs-layers';
import { beforeAll, describe, expect, it } from 'vitest';
import { Rng } from '../core/rng.js';
import { expectSaveLoadIdentical } from './fixtures/modelRoundTrip.js';
import { buildUNet, defaultUNetConfig, unetGeometry, type UNetConfig } from '../models/unet.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
  await tf.ready();
});

/** Small configs: the cpu backend is slow, and shapes/receptive fields do not depend on the filter count. */
const tiny = (dims: 2 | 3, depth: number, variant: 'n2v' | 'n2v2', kernelSize = 3): UNetConfig => ({
  dims,
  depth,
  filters: 2,
  kernelSize,
  batchNorm: true,
  variant,
});

function randomInput(shape: number[], rng: Rng): tf.Tensor {
  const values = new Float32Array(shape.reduce((a, b) => a * b, 1));
  for (let i = 0; i < values.length; i++) values[i] = rng.normal();
  return tf.tensor(values, shape);
}

describe('defaultUNetConfig', () => {
  it('is the n2v reference network', () => {
    expect(defaultUNetConfig(2)).toEqual({ dims: 2, depth: 2, filters: 32, kernelSize: 3, batchNorm: true, variant: 'n2v', init: 'torch' });
    expect(defaultUNetConfig(3).dims).toBe(3);
  });
});

describe('buildUNet output shapes', () => {
  const cases: { cfg: UNetConfig; spatial: number[] }[] = [
    { cfg: tiny(2, 1, 'n2v'), spatial: [6, 10] },
    { cfg: tiny(2, 2, 'n2v'), spatial: [12, 20] },
    { cfg: tiny(2, 2, 'n2v2'), spatial: [12, 20] },
    { cfg: tiny(2, 3, 'n2v'), spatial: [24, 40] },
    { cfg: tiny(2, 3, 'n2v2'), spatial: [40, 24] },
    { cfg: tiny(3, 1, 'n2v'), spatial: [2, 6, 10] },
    { cfg: tiny(3, 1, 'n2v2'), spatial: [6, 2, 10] },
    { cfg: tiny(3, 2, 'n2v'), spatial: [4, 12, 20] },
    { cfg: tiny(3, 2, 'n2v2'), spatial: [12, 4, 20] },
  ];
  for (const { cfg, spatial } of cases) {
    it(`${cfg.dims}D depth ${cfg.depth} ${cfg.variant} on [${spatial.join('x')}] gives the input size, 1 channel`, () => {
      const geometry = unetGeometry(cfg);
      for (const s of spatial) expect(s % geometry.sizeMultiple).toBe(0);
      const model = buildUNet(cfg, 1);
      const x = randomInput([2, ...spatial, 1], new Rng(2));
      const y = model.predict(x) as tf.Tensor;
      expect(y.shape).toEqual([2, ...spatial, 1]);
      expect(model.outputs[0].shape).toEqual([null, ...spatial.map(() => null), 1]);
      const values = y.dataSync();
      expect(values.every(Number.isFinite)).toBe(true);
      tf.dispose([x, y]);
      model.dispose();
    });
  }

  it('runs a training-mode forward and backward pass in 3D (custom batch norm, upsampling, blur pool)', () => {
    const model = buildUNet(tiny(3, 1, 'n2v2'), 3);
    const x = randomInput([2, 4, 4, 4, 1], new Rng(4));
    const bn = model.getLayer('down0_0_bn');
    const movingMeanBefore = bn.getWeights()[2].dataSync().slice();
    const { value, grads } = tf.variableGrads(() => tf.mean(tf.square(model.apply(x, { training: true }) as tf.Tensor)) as tf.Scalar);
    expect(Number.isFinite(value.dataSync()[0])).toBe(true);
    const gradNames = Object.keys(grads);
    expect(gradNames.length).toBe(model.trainableWeights.length);
    for (const name of gradNames) expect(grads[name].dataSync().every(Number.isFinite)).toBe(true);
    // Training mode moves the moving averages towards the batch statistics.
    expect(bn.getWeights()[2].dataSync()).not.toEqual(movingMeanBefore);
    tf.dispose([x, value, ...Object.values(grads)]);
    model.dispose();
  });
});

describe('n2v2 architecture', () => {
  const outboundLayerNames = (model: tfl.LayersModel, name: string): string[] =>
    model.getLayer(name).outboundNodes.map((node) => node.outboundLayer.name);

  for (const dims of [2, 3] as const) {
    it(`${dims}D: no skip connection at the top level, skips below it, max-blur-pool instead of max-pool`, () => {
      const n2v = buildUNet(tiny(dims, 2, 'n2v'), 1);
      const n2v2 = buildUNet(tiny(dims, 2, 'n2v2'), 1);
      // The top level's last encoder activation feeds the pool and the decoder concat in n2v, only the pool in n2v2.
      expect(outboundLayerNames(n2v, 'down0_1_relu').sort()).toEqual(['down0_pool', 'up0_concat']);
      expect(outboundLayerNames(n2v2, 'down0_1_relu')).toEqual(['down0_pool']);
      expect(outboundLayerNames(n2v2, 'down1_1_relu').sort()).toEqual(['down1_pool', 'up1_concat']);
      const className = (m: tfl.LayersModel, cls: string): number => m.layers.filter((l) => l.getClassName() === cls).length;
      expect(className(n2v, 'Concatenate')).toBe(2);
      expect(className(n2v2, 'Concatenate')).toBe(1);
      expect(className(n2v2, 'BlindspotMaxBlurPool')).toBe(2);
      expect(className(n2v2, dims === 2 ? 'MaxPooling2D' : 'MaxPooling3D')).toBe(0);
      expect(className(n2v, dims === 2 ? 'MaxPooling2D' : 'MaxPooling3D')).toBe(2);
      n2v.dispose();
      n2v2.dispose();
    });
  }

  it('max-blur-pool equals max pool 2x2 stride 1 then depthwise [1,2,1]x[1,2,1]/16 blur with stride 2 (2D reference ops)', () => {
    const model = buildUNet(tiny(2, 1, 'n2v2'), 5);
    const pool = model.getLayer('down0_pool');
    const x = randomInput([2, 8, 6, 3], new Rng(6));
    const got = pool.apply(x) as tf.Tensor;
    const expected = tf.tidy(() => {
      const maxed = tf.maxPool(x as tf.Tensor4D, 2, 1, 'same');
      const b = tf.tensor1d([1, 2, 1]);
      const kernel2d = tf.div(tf.outerProduct(b, b), 16);
      const kernel = tf.tile(tf.reshape(kernel2d, [3, 3, 1, 1]), [1, 1, 3, 1]) as tf.Tensor4D;
      return tf.depthwiseConv2d(maxed, kernel, 2, 'same');
    });
    expect(got.shape).toEqual([2, 4, 3, 3]);
    const a = got.dataSync();
    const e = expected.dataSync();
    for (let i = 0; i < a.length; i++) expect(a[i]).toBeCloseTo(e[i], 5);
    tf.dispose([x, got, expected]);
    model.dispose();
  });
});

describe('seeded initialisation', () => {
  it('same seed gives identical weights, another seed different ones', () => {
    const weights = (seed: number): Float32Array[] => {
      const model = buildUNet(tiny(2, 2, 'n2v2'), seed);
      const values = model.getWeights().map((w) => w.dataSync() as Float32Array);
      model.dispose();
      return values;
    };
    const a = weights(7);
    const b = weights(7);
    const c = weights(8);
    expect(a.length).toBe(b.length);
    for (let i = 0; i < a.length; i++) expect(Array.from(b[i])).toEqual(Array.from(a[i]));
    const kernelsDiffer = a.some((w, i) => w.some((v, j) => v !== c[i][j]));
    expect(kernelsDiffer).toBe(true);
    // Different conv layers get different kernels (per-layer seeds).
    const model = buildUNet(tiny(2, 2, 'n2v'), 7);
    const k1 = model.getLayer('up1_0_conv').getWeights()[0].dataSync();
    const k2 = model.getLayer('up1_1_conv').getWeights()[0].dataSync();
    expect(Array.from(k1.slice(0, 8))).not.toEqual(Array.from(k2.slice(0, 8)));
    model.dispose();
  });
});

describe('save and load with custom layers', () => {
  for (const dims of [2, 3] as const) {
    it(`${dims}D n2v2 round-trips through model.json and weights with identical outputs`, async () => {
      const model = buildUNet(tiny(dims, 2, 'n2v2'), 11);
      // Non-trivial weights everywhere, batch-norm moving statistics included (variance kept positive).
      const rng = new Rng(12);
      model.setWeights(
        model.getWeights().map((w) => {
          const values = new Float32Array(w.size);
          for (let i = 0; i < values.length; i++) values[i] = 0.5 + rng.uniform();
          return tf.tensor(values, w.shape);
        }),
      );
      const spatial = dims === 2 ? [8, 12] : [4, 8, 4];
      const x = randomInput([1, ...spatial, 1], new Rng(13));
      const classes = ['BlindspotMaxBlurPool', 'BlindspotNearestUpSampling', ...(dims === 3 ? ['BlindspotChannelBatchNorm'] : [])];
      await expectSaveLoadIdentical(model, x, classes);
      x.dispose();
      model.dispose();
    });
  }
});

describe('receptive radius', () => {
  it('matches a hand derivation for the reference n2v network (depth 2, 3x3)', () => {
    // Level-0 convs +-2, pool [2j, 2j+1], level-1 convs +-2, pool, bottom convs +-2, then back up: the
    // worst output phase reaches 23 pixels on one side (and 22 on the other phase's opposite side).
    expect(unetGeometry(defaultUNetConfig(2)).receptiveRadius).toBe(23);
    expect(unetGeometry(defaultUNetConfig(2)).sizeMultiple).toBe(4);
    expect(unetGeometry({ ...defaultUNetConfig(3), depth: 3 }).sizeMultiple).toBe(8);
  });

  /**
   * Gradient of one output pixel per batch element w.r.t. the input: batch element b looks at output
   * phase b mod sizeMultiple on every axis (the field depends on the phase), several random inputs
   * per phase so max pools and relus open every path somewhere. Batch elements are independent at
   * inference, so one backward pass gives every element's own receptive field.
   */
  function measuredExtent(cfg: UNetConfig, samplesPerPhase: number, measuredAxes: number[]): { before: number; after: number } {
    const geometry = unetGeometry(cfg);
    const m = geometry.sizeMultiple;
    const size = Math.ceil((2 * geometry.receptiveRadius + m + 4) / m) * m;
    const centre = Math.floor(size / 2 / m) * m - (m > 1 ? m / 2 : 0);
    // Axes not measured are kept thin (cheap); the border cuts the field along them, not along the others.
    const thin = 2 * m;
    const spatial = [...Array(cfg.dims).keys()].map((a) => (measuredAxes.includes(a) ? size : thin));
    const batch = m * samplesPerPhase;
    const model = buildUNet(cfg, 21);
    // Positive kernels, biases and inputs keep every relu open, so a zero gradient can only come from
    // outside the field or from a max pool picking another pixel.
    for (const layer of model.layers) {
      if (!layer.name.endsWith('_conv') && layer.name !== 'output') continue;
      const [kernel, bias] = layer.getWeights();
      // Layers followed by batch norm have no bias (see buildUNet); positive kernels keep ReLUs open either way.
      layer.setWeights(bias === undefined ? [tf.abs(kernel)] : [tf.abs(kernel), tf.fill(bias.shape, 0.1)]);
    }
    const plane = spatial.reduce((a, b) => a * b, 1);
    const inputValues = new Float32Array(batch * plane);
    const rng = new Rng(22);
    const selection = new Float32Array(batch * plane);
    const outputPositions: number[] = [];
    for (let b = 0; b < batch; b++) {
      const p = centre + (b % m);
      // The first sample of each phase is a cone rising away from the selected pixel: every feature map
      // stays monotone away from it, so every max pool picks the element further out and the gradient
      // follows the outermost paths. Later samples are plain random positive inputs.
      const cone = b < m;
      for (let i = 0; i < plane; i++) {
        let distance = 0;
        let rest = i;
        for (let a = cfg.dims - 1; a >= 0; a--) {
          const coordinate = rest % spatial[a];
          rest = Math.floor(rest / spatial[a]);
          if (measuredAxes.includes(a)) distance += Math.abs(coordinate - p);
        }
        inputValues[b * plane + i] = cone ? 0.1 + distance + 0.01 * rng.uniform() : 0.1 + rng.uniform();
      }
      outputPositions.push(p);
      let index = 0;
      for (let a = 0; a < cfg.dims; a++) index = index * spatial[a] + (measuredAxes.includes(a) ? p : m);
      selection[b * plane + index] = 1;
    }
    const x = tf.tensor(inputValues, [batch, ...spatial, 1]);
    const selector = tf.tensor(selection, [batch, ...spatial, 1]);
    const gradient = tf.grad((input: tf.Tensor) => tf.sum(tf.mul(model.apply(input) as tf.Tensor, selector)))(x);
    const g = gradient.dataSync();
    let before = 0;
    let after = 0;
    let nonZero = 0;
    for (let b = 0; b < batch; b++) {
      const p = outputPositions[b];
      for (let i = 0; i < plane; i++) {
        if (g[b * plane + i] === 0) continue;
        nonZero++;
        let rest = i;
        for (let a = cfg.dims - 1; a >= 0; a--) {
          const coordinate = rest % spatial[a];
          rest = Math.floor(rest / spatial[a]);
          if (!measuredAxes.includes(a)) continue;
          before = Math.max(before, p - coordinate);
          after = Math.max(after, coordinate - p);
        }
      }
    }
    expect(nonZero, 'some input pixel influences the selected outputs').toBeGreaterThan(0);
    // The field must not touch the border, or the measurement would be cut short.
    expect(centre - geometry.receptiveBefore, 'margin before').toBeGreaterThan(0);
    expect(centre + m - 1 + geometry.receptiveAfter, 'last pixel reached').toBeLessThan(size - 1);
    tf.dispose([x, selector, gradient]);
    model.dispose();
    return { before, after };
  }

  const cases: { cfg: UNetConfig; axes: number[]; samplesPerPhase: number }[] = [
    { cfg: tiny(2, 1, 'n2v'), axes: [0, 1], samplesPerPhase: 2 },
    { cfg: tiny(2, 2, 'n2v'), axes: [0, 1], samplesPerPhase: 2 },
    { cfg: tiny(2, 2, 'n2v2'), axes: [0, 1], samplesPerPhase: 2 },
    { cfg: tiny(2, 3, 'n2v2'), axes: [1], samplesPerPhase: 2 },
    { cfg: tiny(2, 1, 'n2v2', 5), axes: [0, 1], samplesPerPhase: 2 },
    { cfg: tiny(3, 1, 'n2v'), axes: [0, 1, 2], samplesPerPhase: 2 },
    { cfg: tiny(3, 1, 'n2v2'), axes: [0, 1, 2], samplesPerPhase: 2 },
    { cfg: tiny(3, 2, 'n2v'), axes: [0], samplesPerPhase: 2 },
    { cfg: tiny(3, 2, 'n2v2'), axes: [0], samplesPerPhase: 2 },
    { cfg: tiny(3, 2, 'n2v2'), axes: [2], samplesPerPhase: 2 },
  ];
  for (const { cfg, axes, samplesPerPhase } of cases) {
    it(`${cfg.dims}D depth ${cfg.depth} ${cfg.variant} kernel ${cfg.kernelSize}, axes ${axes.join(',')}: gradient support is exactly the computed extent`, () => {
      const geometry = unetGeometry(cfg);
      const measured = measuredExtent(cfg, samplesPerPhase, axes);
      expect(measured).toEqual({ before: geometry.receptiveBefore, after: geometry.receptiveAfter });
      expect(Math.max(measured.before, measured.after)).toBe(geometry.receptiveRadius);
    });
  }
});

describe('batch normalisation in training mode (one op with an analytic gradient)', () => {
  it('matches the textbook formula and its autodiff gradient, rank 2 to 5', async () => {
    const { batchNormTraining } = await import('../models/layers.js');
    const rng = new Rng(42);
    for (const shape of [[6, 3], [2, 5, 4, 3], [2, 3, 4, 5, 2]]) {
      const values = Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => 3 + 2 * rng.normal());
      const channels = shape[shape.length - 1];
      const x = tf.tensor(values, shape);
      const gamma = tf.tensor1d(Array.from({ length: channels }, () => 0.5 + rng.uniform()));
      const beta = tf.tensor1d(Array.from({ length: channels }, () => rng.normal()));
      const weight = tf.tensor(Float32Array.from({ length: values.length }, () => rng.normal()), shape);
      const axes = shape.slice(0, -1).map((_, i) => i);
      const reference = (xi: tf.Tensor, g: tf.Tensor, b: tf.Tensor): tf.Tensor => {
        const { mean, variance } = tf.moments(xi, axes);
        return tf.add(tf.mul(tf.div(tf.sub(xi, mean), tf.sqrt(tf.add(variance, 1e-3))), g), b);
      };
      const ours = (xi: tf.Tensor, g: tf.Tensor, b: tf.Tensor): tf.Tensor => {
        const r = batchNormTraining(xi, g, b, 1e-3);
        tf.dispose([r.mean, r.variance]);
        return r.y;
      };
      const lossOf = (f: typeof ours) => (xi: tf.Tensor, g: tf.Tensor, b: tf.Tensor) => tf.sum(tf.mul(f(xi, g, b), weight));
      const expected = await Promise.all(tf.grads(lossOf(reference))([x, gamma, beta]).map((t) => t.data()));
      const actual = await Promise.all(tf.grads(lossOf(ours))([x, gamma, beta]).map((t) => t.data()));
      const forwardError = tf.max(tf.abs(tf.sub(ours(x, gamma, beta), reference(x, gamma, beta)))).dataSync()[0];
      expect(forwardError).toBeLessThan(1e-4);
      actual.forEach((a, k) => {
        const e = expected[k];
        const scale = Math.max(...Array.from(e, Math.abs));
        a.forEach((v, i) => expect(Math.abs(v - e[i])).toBeLessThan(1e-4 * scale + 1e-5));
      });
      const stats = batchNormTraining(x, gamma, beta, 1e-3);
      const m = tf.moments(x, axes);
      const meanError = tf.max(tf.abs(tf.sub(stats.mean, m.mean))).dataSync()[0];
      expect(meanError).toBeLessThan(1e-4);
      tf.dispose([stats.y, stats.mean, stats.variance, m.mean, m.variance]);
    }
  });
});
