/**
 * The wasm training kernels against the cpu backend (and a plain JS loop for 3D), on seeded
 * random inputs. Relative error = max |wasm - reference| / max |reference|.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';
import '@tensorflow/tfjs-backend-cpu';
import '@tensorflow/tfjs-backend-wasm';
import { registerWasmTrainingKernels, wasmTrainingKernelNames } from '../backend/kernels/index.js';
import { Rng } from '../core/rng.js';
import { maxRelativeError } from './fixtures/relativeError.js';

const tolerance = 1e-4;

function randomValues(shape: readonly number[], seed: number): Float32Array {
  const rng = new Rng(seed);
  const n = shape.reduce((a, b) => a * b, 1);
  const values = new Float32Array(n);
  for (let i = 0; i < n; i++) values[i] = rng.normal();
  return values;
}

/** Runs `compute` on `backend` and reads every result back. */
async function on(backend: 'cpu' | 'wasm', compute: () => tf.Tensor | tf.Tensor[]): Promise<Float32Array[]> {
  await tf.setBackend(backend);
  await tf.ready();
  const before = tf.memory().numTensors;
  const result = tf.tidy(compute);
  const list = Array.isArray(result) ? result : [result];
  const values = await Promise.all(list.map(async (t) => (await t.data()) as Float32Array));
  tf.dispose(list);
  expect(tf.memory().numTensors).toBe(before);
  return values;
}

/** Same computation on cpu and wasm; every output within tolerance. */
async function expectWasmMatchesCpu(compute: () => tf.Tensor | tf.Tensor[]): Promise<void> {
  const expected = await on('cpu', compute);
  const actual = await on('wasm', compute);
  expect(actual.length).toBe(expected.length);
  for (let i = 0; i < expected.length; i++) expect(maxRelativeError(actual[i], expected[i])).toBeLessThan(tolerance);
}

function runKernel(name: string, inputs: tf.NamedTensorMap, attrs: object): tf.Tensor {
  return tf.engine().runKernel(name, inputs, attrs as tf.NamedAttrMap) as tf.Tensor;
}

function tensor(shape: readonly number[], seed: number): tf.Tensor {
  return tf.tensor(randomValues(shape, seed), [...shape]);
}

type Pad2D = 'same' | 'valid' | number;
interface Case2D {
  x: [number, number, number, number];
  k: [number, number];
  outC: number;
  strides: [number, number];
  pad: Pad2D;
}

const cases2d: Case2D[] = [
  { x: [2, 7, 9, 3], k: [3, 3], outC: 5, strides: [1, 1], pad: 'same' },
  { x: [3, 8, 6, 4], k: [3, 3], outC: 2, strides: [1, 1], pad: 'valid' },
  { x: [2, 7, 9, 3], k: [3, 3], outC: 5, strides: [2, 2], pad: 'same' },
  { x: [3, 8, 7, 4], k: [3, 3], outC: 2, strides: [2, 2], pad: 'valid' },
  { x: [1, 9, 9, 2], k: [5, 3], outC: 3, strides: [2, 1], pad: 'valid' },
  { x: [2, 6, 7, 3], k: [3, 3], outC: 4, strides: [1, 1], pad: 1 },
  { x: [2, 9, 8, 3], k: [3, 3], outC: 4, strides: [2, 2], pad: 1 },
  { x: [2, 8, 8, 3], k: [2, 2], outC: 4, strides: [2, 2], pad: 'same' },
  { x: [2, 5, 5, 1], k: [1, 1], outC: 6, strides: [1, 1], pad: 'valid' },
  // 6 input channels: dW's transpose of x takes four channels per pass, then the remaining two.
  { x: [3, 7, 5, 6], k: [3, 3], outC: 3, strides: [1, 1], pad: 'same' },
];

function outShape2D(c: Case2D): number[] {
  return tf.backend_util.computeConv2DInfo(c.x, [...c.k, c.x[3], c.outC], c.strides, 1, c.pad).outShape;
}

beforeAll(async () => {
  registerWasmTrainingKernels();
  await tf.setBackend('wasm');
  await tf.ready();
});

describe('registration', () => {
  it('installs every kernel on wasm and is idempotent', () => {
    const first = wasmTrainingKernelNames.map((name) => tf.getKernel(name, 'wasm')?.kernelFunc);
    registerWasmTrainingKernels();
    const second = wasmTrainingKernelNames.map((name) => tf.getKernel(name, 'wasm')?.kernelFunc);
    expect(first.every((f) => f !== undefined)).toBe(true);
    expect(second).toEqual(first);
  });
});

describe('Conv2DBackpropFilter and Conv2DBackpropInput', () => {
  for (const c of cases2d) {
    const label = `x ${c.x} k ${c.k} Co ${c.outC} strides ${c.strides} pad ${c.pad}`;
    it(`dW: ${label}`, async () => {
      await expectWasmMatchesCpu(() =>
        runKernel('Conv2DBackpropFilter', { x: tensor(c.x, 1), dy: tensor(outShape2D(c), 2) }, {
          strides: c.strides,
          pad: c.pad,
          dataFormat: 'NHWC',
          filterShape: [...c.k, c.x[3], c.outC],
        }),
      );
    });
    it(`dx: ${label}`, async () => {
      await expectWasmMatchesCpu(() =>
        runKernel('Conv2DBackpropInput', { dy: tensor(outShape2D(c), 3), filter: tensor([...c.k, c.x[3], c.outC], 4) }, {
          strides: c.strides,
          pad: c.pad,
          dataFormat: 'NHWC',
          inputShape: c.x,
        }),
      );
    });
  }

  it('explicit asymmetric padding (dW and dx)', async () => {
    const pad = [[0, 0], [2, 0], [1, 1], [0, 0]] as tf.backend_util.ExplicitPadding;
    const xShape = [2, 6, 6, 3];
    const dyShape = tf.backend_util.computeConv2DInfo(xShape as [number, number, number, number], [3, 3, 3, 4], 1, 1, pad).outShape;
    await expectWasmMatchesCpu(() => [
      runKernel('Conv2DBackpropFilter', { x: tensor(xShape, 5), dy: tensor(dyShape, 6) }, { strides: 1, pad, dataFormat: 'NHWC', filterShape: [3, 3, 3, 4] }),
      runKernel('Conv2DBackpropInput', { dy: tensor(dyShape, 6), filter: tensor([3, 3, 3, 4], 7) }, { strides: 1, pad, dataFormat: 'NHWC', inputShape: xShape }),
    ]);
  });

  it('tf.grads of tf.conv2d matches cpu', async () => {
    await expectWasmMatchesCpu(() => {
      const x = tensor([2, 9, 7, 3], 8);
      const w = tensor([3, 3, 3, 6], 9);
      const weight = tensor([2, 9, 7, 6], 10);
      return tf.grads((a: tf.Tensor, b: tf.Tensor) => tf.sum(tf.mul(tf.conv2d(a as tf.Tensor4D, b as tf.Tensor4D, 1, 'same'), weight)))([x, w]);
    });
  });

  it('tf.grads of tf.fused.conv2d (bias + relu, as tfjs-layers uses it) matches cpu', async () => {
    await expectWasmMatchesCpu(() => {
      const x = tensor([3, 8, 8, 4], 11);
      const w = tensor([3, 3, 4, 5], 12);
      const bias = tensor([5], 13);
      const weight = tensor([3, 8, 8, 5], 14);
      return tf.grads((a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) =>
        tf.sum(tf.mul(tf.fused.conv2d({ x: a as tf.Tensor4D, filter: b as tf.Tensor4D, bias: c, strides: 1, pad: 'same', activation: 'relu' }), weight)),
      )([x, w, bias]);
    });
  });
});

interface Case3D {
  x: [number, number, number, number, number];
  k: [number, number, number];
  outC: number;
  strides: [number, number, number];
  pad: 'same' | 'valid';
}

const cases3d: Case3D[] = [
  { x: [2, 5, 6, 7, 3], k: [3, 3, 3], outC: 4, strides: [1, 1, 1], pad: 'same' },
  { x: [1, 6, 5, 4, 2], k: [3, 3, 3], outC: 3, strides: [1, 1, 1], pad: 'valid' },
  { x: [2, 6, 6, 6, 2], k: [3, 3, 3], outC: 3, strides: [2, 2, 2], pad: 'same' },
  { x: [2, 7, 5, 6, 2], k: [2, 2, 2], outC: 3, strides: [2, 2, 2], pad: 'valid' },
  { x: [2, 4, 6, 6, 2], k: [2, 3, 3], outC: 3, strides: [1, 2, 2], pad: 'valid' },
  { x: [2, 5, 6, 5, 2], k: [1, 3, 3], outC: 3, strides: [1, 1, 1], pad: 'same' },
];

function outShape3D(c: Case3D): number[] {
  return tf.backend_util.computeConv3DInfo(c.x, [...c.k, c.x[4], c.outC], c.strides, 1, c.pad).outShape;
}

/** Plain loop: y[b,o,p,q,co] = sum x[b, o*s-pf+t, p*s-pt+i, q*s-pl+j, ci] w[t,i,j,ci,co]. */
function conv3dReference(x: Float32Array, xShape: number[], w: Float32Array, wShape: number[], c: Case3D): Float32Array {
  const info = tf.backend_util.computeConv3DInfo(c.x, [...c.k, c.x[4], c.outC], c.strides, 1, c.pad);
  const [B, D, H, W, Ci] = xShape;
  const [kd, kh, kw, , Co] = wShape;
  const { outDepth, outHeight, outWidth } = info;
  const y = new Float32Array(B * outDepth * outHeight * outWidth * Co);
  for (let b = 0; b < B; b++)
    for (let o = 0; o < outDepth; o++)
      for (let p = 0; p < outHeight; p++)
        for (let q = 0; q < outWidth; q++)
          for (let co = 0; co < Co; co++) {
            let sum = 0;
            for (let t = 0; t < kd; t++)
              for (let i = 0; i < kh; i++)
                for (let j = 0; j < kw; j++) {
                  const d = o * info.strideDepth - info.padInfo.front + t;
                  const h = p * info.strideHeight - info.padInfo.top + i;
                  const v = q * info.strideWidth - info.padInfo.left + j;
                  if (d < 0 || d >= D || h < 0 || h >= H || v < 0 || v >= W) continue;
                  for (let ci = 0; ci < Ci; ci++)
                    sum += x[(((b * D + d) * H + h) * W + v) * Ci + ci] * w[(((t * kh + i) * kw + j) * Ci + ci) * Co + co];
                }
            y[(((b * outDepth + o) * outHeight + p) * outWidth + q) * Co + co] = sum;
          }
  return y;
}

describe('Conv3D, Conv3DBackpropInputV2, Conv3DBackpropFilterV2', () => {
  it('Conv3D matches a plain JS loop on a tiny case', async () => {
    for (const c of [cases3d[0], cases3d[3]]) {
      const wShape = [...c.k, c.x[4], c.outC];
      const [actual] = await on('wasm', () => tf.conv3d(tensor(c.x, 20) as tf.Tensor5D, tensor(wShape, 21) as tf.Tensor5D, c.strides, c.pad));
      const expected = conv3dReference(randomValues(c.x, 20), c.x, randomValues(wShape, 21), wShape, c);
      expect(maxRelativeError(actual, expected)).toBeLessThan(tolerance);
    }
  });

  for (const c of cases3d) {
    const label = `x ${c.x} k ${c.k} Co ${c.outC} strides ${c.strides} pad ${c.pad}`;
    const wShape = [...c.k, c.x[4], c.outC];
    it(`forward, dx and dW: ${label}`, async () => {
      await expectWasmMatchesCpu(() => [
        tf.conv3d(tensor(c.x, 22) as tf.Tensor5D, tensor(wShape, 23) as tf.Tensor5D, c.strides, c.pad),
        runKernel('Conv3DBackpropInputV2', { dy: tensor(outShape3D(c), 24), filter: tensor(wShape, 23) }, {
          strides: c.strides,
          pad: c.pad,
          inputShape: c.x,
        }),
        runKernel('Conv3DBackpropFilterV2', { x: tensor(c.x, 22), dy: tensor(outShape3D(c), 24) }, {
          strides: c.strides,
          pad: c.pad,
          filterShape: wShape,
        }),
      ]);
    });
  }

  it('tf.grads of tf.conv3d matches cpu', async () => {
    await expectWasmMatchesCpu(() => {
      const x = tensor([2, 5, 6, 5, 3], 25);
      const w = tensor([3, 3, 3, 3, 4], 26);
      const weight = tensor([2, 5, 6, 5, 4], 27);
      return tf.grads((a: tf.Tensor, b: tf.Tensor) => tf.sum(tf.mul(tf.conv3d(a as tf.Tensor5D, b as tf.Tensor5D, 1, 'same'), weight)))([x, w]);
    });
  });

  it('the registered gradient of Conv3DBackpropInputV2 (conv3dTranspose) equals the exact linear response', async () => {
    // loss(dy, W) = sum(r * convTranspose(dy, W)) is linear in each argument: d loss/d W[k] = loss(dy, e_k).
    await tf.setBackend('wasm');
    const dyShape = [1, 3, 3, 3, 2];
    const wShape = [2, 2, 2, 3, 2];
    const inputShape = [1, 6, 6, 6, 3];
    const dy = tensor(dyShape, 28);
    const w = tensor(wShape, 29);
    const r = tensor(inputShape, 30);
    const loss = (a: tf.Tensor, b: tf.Tensor): tf.Scalar =>
      tf.sum(tf.mul(r, tf.conv3dTranspose(a as tf.Tensor5D, b as tf.Tensor5D, inputShape as [number, number, number, number, number], 2, 'same')));
    const [gradDy, gradW] = tf.grads(loss)([dy, w]);
    const gW = await gradW.data();
    const gDy = await gradDy.data();
    for (const k of [0, 7, 23, 47]) {
      const basis = tf.tidy(() => tf.reshape(tf.cast(tf.oneHot(tf.tensor1d([k], 'int32'), w.size), 'float32'), wShape));
      const exact = tf.tidy(() => loss(dy, basis));
      expect(Math.abs(gW[k] - (await exact.data())[0])).toBeLessThan(1e-4 * Math.max(1, Math.abs(gW[k])));
      tf.dispose([basis, exact]);
    }
    for (const k of [0, 13, 53]) {
      const basis = tf.tidy(() => tf.reshape(tf.cast(tf.oneHot(tf.tensor1d([k], 'int32'), dy.size), 'float32'), dyShape));
      const exact = tf.tidy(() => loss(basis, w));
      expect(Math.abs(gDy[k] - (await exact.data())[0])).toBeLessThan(1e-4 * Math.max(1, Math.abs(gDy[k])));
      tf.dispose([basis, exact]);
    }
    tf.dispose([dy, w, r, gradDy, gradW]);
  });
});

describe('3D pooling (shipped by tfjs-backend-wasm, checked here)', () => {
  for (const pad of ['valid', 'same'] as const) {
    it(`MaxPool3D/AvgPool3D and their gradients, 2x2x2 stride 2 ${pad}`, async () => {
      await expectWasmMatchesCpu(() => {
        const x = tensor([2, 6, 4, 8, 3], 31);
        const weightShape = tf.maxPool3d(x as tf.Tensor5D, 2, 2, pad).shape;
        const weight = tensor(weightShape, 32);
        const maxGrad = tf.grad((a: tf.Tensor) => tf.sum(tf.mul(tf.maxPool3d(a as tf.Tensor5D, 2, 2, pad), weight)))(x);
        const avgGrad = tf.grad((a: tf.Tensor) => tf.sum(tf.mul(tf.avgPool3d(a as tf.Tensor5D, 2, 2, pad), weight)))(x);
        return [tf.maxPool3d(x as tf.Tensor5D, 2, 2, pad), tf.avgPool3d(x as tf.Tensor5D, 2, 2, pad), maxGrad, avgGrad];
      });
    });
  }
});

describe('a tiny 3D U-Net trains on wasm like on cpu', () => {
  it('conv3d + maxPooling3d + conv3dTranspose + concatenate: same losses', async () => {
    const losses: Record<string, number[]> = {};
    for (const backend of ['cpu', 'wasm'] as const) {
      await tf.setBackend(backend);
      const input = tfl.input({ shape: [4, 8, 6, 1] });
      const init = (seed: number) => tfl.initializers.glorotUniform({ seed });
      const enc = tfl.layers.conv3d({ filters: 4, kernelSize: 3, padding: 'same', activation: 'relu', kernelInitializer: init(1) }).apply(input) as tfl.SymbolicTensor;
      const down = tfl.layers.maxPooling3d({ poolSize: 2, strides: 2 }).apply(enc) as tfl.SymbolicTensor;
      const mid = tfl.layers.conv3d({ filters: 6, kernelSize: 3, padding: 'same', activation: 'relu', kernelInitializer: init(2) }).apply(down) as tfl.SymbolicTensor;
      const up = tfl.layers.conv3dTranspose({ filters: 4, kernelSize: 2, strides: 2, padding: 'same', kernelInitializer: init(3) }).apply(mid) as tfl.SymbolicTensor;
      const merged = tfl.layers.concatenate().apply([up, enc]) as tfl.SymbolicTensor;
      const output = tfl.layers.conv3d({ filters: 1, kernelSize: 1, kernelInitializer: init(4) }).apply(merged) as tfl.SymbolicTensor;
      const model = tfl.model({ inputs: input, outputs: output });
      model.compile({ optimizer: tf.train.sgd(0.05), loss: 'meanSquaredError' });
      const x = tensor([2, 4, 8, 6, 1], 40);
      const y = tensor([2, 4, 8, 6, 1], 41);
      const history = await model.fit(x, y, { epochs: 3, batchSize: 2, shuffle: false, verbose: 0 });
      losses[backend] = history.history.loss as number[];
      tf.dispose([x, y]);
      model.dispose();
    }
    expect(losses.wasm[2]).toBeLessThan(losses.wasm[0]);
    for (let i = 0; i < 3; i++) expect(Math.abs(losses.wasm[i] - losses.cpu[i])).toBeLessThan(1e-4 * losses.cpu[i]);
  });
});

describe('Concat (U-Net skips, upsampling)', () => {
  it('matches cpu for two and three inputs of different widths, rank 2 to 5', async () => {
    const cases: number[][][] = [
      [[5, 3], [5, 4]],
      [[2, 3, 5, 8], [2, 3, 5, 8]],
      [[2, 3, 4, 5, 1], [2, 3, 4, 5, 6], [2, 3, 4, 5, 2]],
    ];
    for (const [i, shapes] of cases.entries()) {
      await expectWasmMatchesCpu(() => tf.concat(shapes.map((s, k) => tensor(s, 800 + 10 * i + k)), -1));
    }
    // Other axes: the first, and the middle one of nearest-neighbour upsampling (long rows copied by `set`).
    await expectWasmMatchesCpu(() => tf.concat([tensor([2, 3], 850), tensor([4, 3], 851)], 0));
    await expectWasmMatchesCpu(() => tf.concat([tensor([2, 5, 1, 70], 852), tensor([2, 5, 1, 70], 853)], 2));
    await expectWasmMatchesCpu(() => tf.concat([tensor([3, 2, 4], 854), tensor([3, 1, 4], 855), tensor([3, 3, 4], 856)], 1));
    // Rows of 16-63 floats (copyWithin) next to shorter ones (loop), as in the U-Net's channel skips.
    await expectWasmMatchesCpu(() => tf.concat([tensor([3, 5, 20], 857), tensor([3, 5, 33], 858), tensor([3, 5, 7], 859)], 2));
  });
});

describe('SplitV (concat gradients)', () => {
  it('matches cpu for even, uneven and inferred (-1) splits, rank 2 to 5', async () => {
    const cases: Array<{ shape: number[]; splits: number | number[] }> = [
      { shape: [5, 7], splits: [3, 4] },
      { shape: [2, 3, 5, 6], splits: 3 },
      { shape: [2, 3, 4, 5, 9], splits: [4, -1, 2] },
      { shape: [1, 2, 3, 4, 8], splits: [8] },
    ];
    for (const [i, c] of cases.entries()) {
      await expectWasmMatchesCpu(() => tf.split(tensor(c.shape, 700 + i), c.splits, -1));
    }
    // Other axes: the first, the middle axis of the upsampling gradient (short rows by a loop, long
    // rows of >= 64 floats by copyWithin), and uneven splits of a middle axis.
    await expectWasmMatchesCpu(() => tf.split(tensor([4, 6, 3], 777), [1, 3], 0));
    await expectWasmMatchesCpu(() => tf.split(tensor([3, 4, 2, 3], 778), 2, 2));
    await expectWasmMatchesCpu(() => tf.split(tensor([5, 3, 2, 70], 779), 2, 2));
    await expectWasmMatchesCpu(() => tf.split(tensor([2, 9, 5, 17], 780), [2, -1, 4], 1));
    await expectWasmMatchesCpu(() => tf.split(tensor([7, 130], 781), [1, 6], 0));
  });
});
