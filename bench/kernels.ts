/**
 * Micro-benchmark of the wasm training kernels on the reference U-Net layer shapes (batch 16,
 * 3x3, 'same'): forward conv, dx and dW in GFLOP/s, plus the alternatives tried for dW/dx; then
 * A/B comparisons (old vs new formulation alternating in this process, median of the repeats) of
 * the fused batch norm (and, with 2+ threads, its helper thread), dW's transpose of x, and SplitV
 * off the last axis.
 * `npm run bench:kernels [-- --quick] [-- --threads N]`; the table goes to bench/results/kernels-*.json too.
 */
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-layers';
import { registerWasmTrainingKernels } from '../backend/kernels/index.js';
import { setFilterGradTransposeInJs, setStridedInputGradViaZeroInsertion } from '../backend/kernels/conv2d-grad.js';
import { setBatchNormHelperThread, setFusedBatchNorm } from '../backend/kernels/batchNorm.js';
import { startWasmBackend } from '../backend/wasm-threads.js';
import { batchNormTraining } from '../models/layers.js';
import { writeResult } from './common.js';

interface LayerShape {
  batch: number;
  size: number;
  inC: number;
  outC: number;
}

const quick = process.argv.includes('--quick');
const layers: LayerShape[] = [
  { batch: 16, size: 64, inC: 1, outC: 32 },
  { batch: 16, size: 64, inC: 32, outC: 32 },
  { batch: 16, size: 32, inC: 64, outC: 64 },
  { batch: 16, size: 16, inC: 128, outC: 128 },
];

/** Median wall time in ms of `run`, which must leave no tensors behind. */
async function timeMs(run: () => tf.Tensor, repeats: number): Promise<number> {
  const warm = run();
  await warm.data();
  warm.dispose();
  const times: number[] = [];
  for (let i = 0; i < repeats; i++) {
    const start = performance.now();
    const out = run();
    await out.data();
    times.push(performance.now() - start);
    out.dispose();
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)];
}

function runKernel(name: string, inputs: tf.NamedTensorMap, attrs: object): tf.Tensor {
  return tf.engine().runKernel(name, inputs, attrs as tf.NamedAttrMap) as tf.Tensor;
}

/** dW as one matmul per filter tap: dW[i,j] = shift_ij(x)^T dy (the alternative to the transposed conv). */
function filterGradPerTapMatmul(x: tf.Tensor4D, dy: tf.Tensor4D, k: number): tf.Tensor {
  return tf.tidy(() => {
    const [batch, h, w, inC] = x.shape;
    const outC = dy.shape[3];
    const half = (k - 1) / 2;
    const padded = tf.pad(x, [[0, 0], [half, half], [half, half], [0, 0]]);
    const dyRows = tf.reshape(dy, [batch * h * w, outC]);
    const taps: tf.Tensor[] = [];
    for (let i = 0; i < k; i++) {
      for (let j = 0; j < k; j++) {
        const shifted = tf.reshape(tf.slice(padded, [0, i, j, 0], [batch, h, w, inC]), [batch * h * w, inC]);
        taps.push(tf.matMul(shifted, dyRows, true, false));
      }
    }
    return tf.reshape(tf.stack(taps), [k, k, inC, outC]);
  });
}

/**
 * Old vs new, alternating within each repeat so that both see the same machine load; returns the
 * median ms of each. `setup` switches the formulation; `run` must leave no tensors behind.
 */
async function abMs(variants: Array<{ setup: () => void; run: () => tf.Tensor | tf.Tensor[] }>, repeats: number): Promise<number[]> {
  const times: number[][] = variants.map(() => []);
  for (let r = 0; r <= repeats; r++) {
    for (const [i, v] of variants.entries()) {
      v.setup();
      const start = performance.now();
      const out = v.run();
      const list = Array.isArray(out) ? out : [out];
      for (const t of list) await t.data();
      if (r > 0) times[i].push(performance.now() - start);
      tf.dispose(list);
    }
  }
  return times.map((t) => {
    const sorted = [...t].sort((a, b) => a - b);
    return sorted[Math.floor(sorted.length / 2)];
  });
}

/** The batch-norm layers of the reference U-Net per training step: [spatial size, channels] and how many. */
const batchNormLayers: Array<{ size: number; channels: number; count: number }> = [
  { size: 64, channels: 32, count: 4 },
  { size: 32, channels: 64, count: 3 },
  { size: 32, channels: 32, count: 1 },
  { size: 16, channels: 128, count: 1 },
  { size: 16, channels: 64, count: 1 },
];

/** The 3x3 convolutions of the reference U-Net (dW per step): [spatial size, Ci, Co]. */
const convLayers: Array<[number, number, number]> = [
  [64, 1, 32], [64, 32, 32], [64, 64, 32], [64, 32, 32], [32, 32, 64], [32, 64, 64], [32, 128, 64], [32, 64, 32], [16, 64, 128], [16, 128, 64],
];

async function abSection(repeats: number, shippedSplitV: tf.KernelFunc, started: { threads: number }): Promise<string[]> {
  const lines = ['', `A/B (median of ${repeats}, alternating; ms):`, row(['kernel', 'old', 'new', 'gain']), row(['---', '---', '---', '---'])];
  const ab = (label: string, oldMs: number, newMs: number): void => {
    lines.push(row([label, oldMs, newMs, `${(oldMs / newMs).toFixed(2)}x`]));
  };
  let bnOld = 0;
  let bnNew = 0;
  for (const l of batchNormLayers) {
    const shape = [16, l.size, l.size, l.channels];
    const x = tf.randomNormal(shape, 0, 1, 'float32', 11);
    const gamma = tf.randomUniform([l.channels], 0.5, 1.5, 'float32', 12);
    const beta = tf.randomNormal([l.channels], 0, 1, 'float32', 13);
    const dy = tf.randomNormal(shape, 0, 1, 'float32', 14);
    // Forward and the three gradients, as one training step runs them (dy seeded through sum(y * dy)).
    const run = (): tf.Tensor[] =>
      tf.tidy(() =>
        tf.grads((a: tf.Tensor, g: tf.Tensor, b: tf.Tensor) => {
          const r = batchNormTraining(a, g, b, 1e-3);
          tf.dispose([r.mean, r.variance]);
          return tf.sum(tf.mul(r.y, dy));
        })([x, gamma, beta]),
      );
    const [oldMs, newMs] = await abMs([{ setup: () => setFusedBatchNorm(false), run }, { setup: () => setFusedBatchNorm(true), run }], repeats);
    ab(`batch norm fwd+bwd [${shape}] (x${l.count}/step)`, oldMs, newMs);
    bnOld += l.count * oldMs;
    bnNew += l.count * newMs;
    tf.dispose([x, gamma, beta, dy]);
  }
  ab('batch norm, all layers of a step', bnOld, bnNew);
  if (started.threads >= 2) {
    // The fused kernels with their second half of the rows on this thread too (old) or on the helper thread (new).
    let serial = 0;
    let shared = 0;
    for (const l of batchNormLayers) {
      const shape = [16, l.size, l.size, l.channels];
      const x = tf.randomNormal(shape, 0, 1, 'float32', 11);
      const gamma = tf.randomUniform([l.channels], 0.5, 1.5, 'float32', 12);
      const beta = tf.randomNormal([l.channels], 0, 1, 'float32', 13);
      const run = (): tf.Tensor[] => {
        const r = batchNormTraining(x, gamma, beta, 1e-3);
        const grads = tf.engine().runKernel('BlindspotBatchNormTrainGrad', { dy: r.y, x, mean: r.mean, variance: r.variance, gamma }, { epsilon: 1e-3 }) as tf.Tensor[];
        return [r.y, r.mean, r.variance, ...grads];
      };
      const [oldMs, newMs] = await abMs([{ setup: () => setBatchNormHelperThread(false), run }, { setup: () => setBatchNormHelperThread(true), run }], repeats);
      ab(`batch norm kernels, helper thread off vs on [${shape}] (x${l.count}/step)`, oldMs, newMs);
      serial += l.count * oldMs;
      shared += l.count * newMs;
      tf.dispose([x, gamma, beta]);
    }
    setBatchNormHelperThread(false);
    ab('batch norm kernels, helper thread, all layers of a step', serial, shared);
  }
  let dwOld = 0;
  let dwNew = 0;
  for (const [size, inC, outC] of convLayers) {
    const x = tf.randomNormal([16, size, size, inC], 0, 1, 'float32', 15);
    const dy = tf.randomNormal([16, size, size, outC], 0, 1, 'float32', 16);
    const run = (): tf.Tensor => runKernel('Conv2DBackpropFilter', { x, dy }, { strides: [1, 1], pad: 'same', dataFormat: 'NHWC', filterShape: [3, 3, inC, outC] });
    const [oldMs, newMs] = await abMs([{ setup: () => setFilterGradTransposeInJs(false), run }, { setup: () => setFilterGradTransposeInJs(true), run }], repeats);
    ab(`dW, x transposed by Transpose vs JS: 16, ${size}x${size}, ${inC}->${outC}`, oldMs, newMs);
    dwOld += oldMs;
    dwNew += newMs;
    tf.dispose([x, dy]);
  }
  ab('dW, all 3x3 layers of a step', dwOld, dwNew);
  for (const shape of [[1024, 32, 2, 32], [512, 16, 2, 64], [16, 32, 2, 1024]]) {
    const x = tf.randomNormal(shape, 0, 1, 'float32', 17);
    const attrs = { numOrSizeSplits: 2, axis: 2 } as unknown as tf.NamedAttrMap;
    const shipped = (): tf.Tensor[] =>
      (shippedSplitV({ inputs: { x }, backend: tf.backend(), attrs }) as tf.TensorInfo[]).map((info) => tf.engine().makeTensorFromTensorInfo(info));
    const ours = (): tf.Tensor[] => tf.split(x, 2, 2);
    const [oldMs, newMs] = await abMs([{ setup: () => undefined, run: shipped }, { setup: () => undefined, run: ours }], repeats);
    ab(`SplitV axis 2 (upsampling gradient) [${shape}]`, oldMs, newMs);
    x.dispose();
  }
  return lines;
}

function row(cells: (string | number)[]): string {
  return '| ' + cells.map((c) => (typeof c === 'number' ? c.toFixed(2) : c)).join(' | ') + ' |';
}

async function main(): Promise<void> {
  await import('@tensorflow/tfjs-backend-wasm');
  const threadArg = process.argv.indexOf('--threads');
  const threads = threadArg >= 0 ? Number(process.argv[threadArg + 1]) : 1;
  const repeats = quick ? 2 : 5;
  const shippedDx = tf.getKernel('Conv2DBackpropInput', 'wasm')!.kernelFunc;
  const shippedSplitV = tf.getKernel('SplitV', 'wasm')!.kernelFunc;
  registerWasmTrainingKernels();
  const started = await startWasmBackend(threads);
  const lines: string[] = [
    row(['layer (B, HxW, Ci->Co)', 'GFLOP', 'fwd GFLOP/s', 'dx GFLOP/s', 'dx shipped loop', 'dW GFLOP/s', 'dW per-tap matmul']),
    row(['---', '---', '---', '---', '---', '---', '---']),
  ];
  for (const l of layers) {
    const x = tf.randomNormal([l.batch, l.size, l.size, l.inC], 0, 1, 'float32', 1) as tf.Tensor4D;
    const w = tf.randomNormal([3, 3, l.inC, l.outC], 0, 1, 'float32', 2) as tf.Tensor4D;
    const dy = tf.randomNormal([l.batch, l.size, l.size, l.outC], 0, 1, 'float32', 3) as tf.Tensor4D;
    const gflop = (2 * l.batch * l.size * l.size * 9 * l.inC * l.outC) / 1e9;
    const rate = (ms: number): number => gflop / (ms / 1e3);
    const fwd = await timeMs(() => tf.conv2d(x, w, 1, 'same'), repeats);
    const dxAttrs = { strides: [1, 1], pad: 'same', dataFormat: 'NHWC', inputShape: x.shape };
    const dx = await timeMs(() => runKernel('Conv2DBackpropInput', { dy, filter: w }, dxAttrs), repeats);
    const dxLoop = await timeMs(() => {
      const info = shippedDx({ inputs: { dy, filter: w }, backend: tf.backend(), attrs: dxAttrs as unknown as tf.NamedAttrMap });
      return tf.engine().makeTensorFromTensorInfo(info as tf.TensorInfo);
    }, quick ? 1 : 2);
    const dwAttrs = { strides: [1, 1], pad: 'same', dataFormat: 'NHWC', filterShape: w.shape };
    const dw = await timeMs(() => runKernel('Conv2DBackpropFilter', { x, dy }, dwAttrs), repeats);
    const dwMatmul = await timeMs(() => filterGradPerTapMatmul(x, dy, 3), repeats);
    lines.push(
      row([`${l.batch}, ${l.size}x${l.size}, ${l.inC}->${l.outC}`, gflop, rate(fwd), rate(dx), rate(dxLoop), rate(dw), rate(dwMatmul)]),
    );
    tf.dispose([x, w, dy]);
  }

  // Stride 2 dx: zero-inserted dy + stride-1 conv vs the shipped loop.
  {
    const x = tf.randomNormal([16, 32, 32, 32], 0, 1, 'float32', 4) as tf.Tensor4D;
    const w = tf.randomNormal([3, 3, 32, 32], 0, 1, 'float32', 5) as tf.Tensor4D;
    const dy = tf.randomNormal([16, 16, 16, 32], 0, 1, 'float32', 6) as tf.Tensor4D;
    const gflop = (2 * 16 * 16 * 16 * 9 * 32 * 32) / 1e9;
    const attrs = { strides: [2, 2], pad: 'same', dataFormat: 'NHWC', inputShape: x.shape };
    setStridedInputGradViaZeroInsertion(true);
    const zi = await timeMs(() => runKernel('Conv2DBackpropInput', { dy, filter: w }, attrs), repeats);
    setStridedInputGradViaZeroInsertion(false);
    const loop = await timeMs(() => runKernel('Conv2DBackpropInput', { dy, filter: w }, attrs), repeats);
    setStridedInputGradViaZeroInsertion(true);
    lines.push('', `stride-2 dx (16, 32x32 -> 16x16, 32->32): zero insertion ${(gflop / (zi / 1e3)).toFixed(2)} GFLOP/s, shipped loop ${(gflop / (loop / 1e3)).toFixed(2)} GFLOP/s`);
    tf.dispose([x, w, dy]);
  }

  // 3D: the composed kernels vs the shipped Conv3D loop.
  {
    const shape = [2, 16, 32, 32, 32] as const;
    const x = tf.randomNormal([...shape], 0, 1, 'float32', 7) as tf.Tensor5D;
    const w = tf.randomNormal([3, 3, 3, 32, 32], 0, 1, 'float32', 8) as tf.Tensor5D;
    const dy = tf.randomNormal([...shape], 0, 1, 'float32', 9) as tf.Tensor5D;
    const gflop = (2 * 2 * 16 * 32 * 32 * 27 * 32 * 32) / 1e9;
    const rate = (ms: number): string => (gflop / (ms / 1e3)).toFixed(2);
    const fwd = await timeMs(() => tf.conv3d(x, w, 1, 'same'), repeats);
    const dx = await timeMs(
      () => runKernel('Conv3DBackpropInputV2', { dy, filter: w }, { strides: [1, 1, 1], pad: 'same', inputShape: x.shape }),
      repeats,
    );
    const dw = await timeMs(
      () => runKernel('Conv3DBackpropFilterV2', { x, dy }, { strides: [1, 1, 1], pad: 'same', filterShape: w.shape }),
      repeats,
    );
    lines.push('', `3D (2, 16x32x32, 32->32, 3x3x3 same; ${gflop.toFixed(2)} GFLOP): fwd ${rate(fwd)}, dx ${rate(dx)}, dW ${rate(dw)} GFLOP/s`);
    tf.dispose([x, w, dy]);
  }
  lines.push(...(await abSection(quick ? 3 : 9, shippedSplitV, started)));
  console.log(lines.join('\n'));
  const file = await writeResult('kernels', { backend: 'wasm', threads: started.threads, repeats, table: lines });
  console.log(`written ${file}`);
}

await main();
