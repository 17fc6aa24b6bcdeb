/**
 * The ONNX training graph against tfjs' own gradients on the cpu backend (tfjs' reference kernels,
 * double-precision sums): realistic patches (noisy synthetic cells, normalised, N2V-masked), so
 * that ReLU zeros, pooling ties and batch-norm statistics are those of training, not of uniform noise.
 */
import { describe, it, expect, beforeAll } from 'vitest';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../backend/select.js';
import { Rng } from '../core/rng.js';
import { addGaussianNoise, syntheticCells } from '../core/synthetic.js';
import { openOnnxGradientEngine } from '../engines/onnxGradients.js';
import { maskedLoss } from '../models/losses.js';
import { defaultMaskOptions, maskPatch } from '../models/masking.js';
import { UnsupportedLayerError } from '../models/onnx/layers.js';
import { buildDbsn } from '../models/dbsn.js';
import { buildLaine19 } from '../models/laine19.js';
import { laine19 } from '../methods/laine19.js';
import { dbsn } from '../methods/dbsn.js';
import * as tfl from '@tensorflow/tfjs-layers';
import { buildUNet } from '../models/unet.js';
import { neighbor2neighbor } from '../methods/neighbor2neighbor.js';
import { noise2info } from '../methods/noise2info.js';
import { n2v } from '../methods/n2v.js';
import { pn2v } from '../methods/pn2v.js';
import { divnoising } from '../methods/divnoising.js';
import { buildVae } from '../models/vae.js';
import { gaussianPriorLoss, learnedNoiseVariance } from '../models/bayes.js';
import { normalisedNoiseLikelihood } from '../noise/likelihood.js';
import type { PatchPreparation, TrainingContext } from '../methods/method.js';
import { openTrainEngine } from '../pipeline/trainEngine.js';

beforeAll(async () => {
  await initBackend({ backend: 'cpu' });
});

/** `count` patches of `shape` (YX or ZYX) of noisy synthetic cells, each normalised to mean 0 / std 1, N2V-masked (5%). */
function realisticBatch(count: number, shape: number[], seed: number): { shape: number[]; inputs: Float32Array; targets: Float32Array; masks: Float32Array } {
  const rng = new Rng(seed);
  const per = shape.reduce((a, b) => a * b, 1);
  const inputs = new Float32Array(count * per);
  const targets = new Float32Array(count * per);
  const masks = new Float32Array(count * per);
  for (let b = 0; b < count; b++) {
    const cells = syntheticCells((shape.length === 2 ? [1, ...shape] : shape) as [number, number, number], rng, { blobs: Math.max(4, Math.round(per / 60)), filaments: 2 });
    const noisy = addGaussianNoise(cells.data.map((v) => v * 100), 15, rng);
    let mean = 0;
    for (const v of noisy) mean += v / per;
    let variance = 0;
    for (const v of noisy) variance += (v - mean) ** 2 / per;
    const patch = Float32Array.from(noisy, (v) => (v - mean) / Math.sqrt(variance));
    const masked = maskPatch(patch, shape as unknown as Parameters<typeof maskPatch>[1], { ...defaultMaskOptions, fraction: 0.05 }, rng);
    inputs.set(masked.input, b * per);
    targets.set(patch, b * per);
    masks.set(masked.mask, b * per);
  }
  return { shape: [count, ...shape, 1], inputs, targets, masks };
}

/** ||a - b|| / ||a||. */
function relativeError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    num += (a[i] - b[i]) ** 2;
    den += a[i] ** 2;
  }
  return Math.sqrt(num / Math.max(den, 1e-30));
}

describe('the ONNX training graph', () => {
  const cases = [
    { dims: 2, loss: 'mse', batchNorm: false },
    { dims: 2, loss: 'mae', batchNorm: false },
    { dims: 2, loss: 'mse', batchNorm: true },
    { dims: 3, loss: 'mse', batchNorm: false },
    { dims: 3, loss: 'mse', batchNorm: true },
    // N2V2: max-blur-pool (both alignments) and no top skip.
    { dims: 2, loss: 'mse', batchNorm: true, blurPool: 'centred' },
    { dims: 2, loss: 'mse', batchNorm: false, blurPool: 'trailing' },
    { dims: 3, loss: 'mse', batchNorm: false, blurPool: 'centred' },
  ] as const;
  for (const c of cases) {
    const { dims, loss, batchNorm } = c;
    const blurPool = 'blurPool' in c ? c.blurPool : undefined;
    it(`gives tfjs' masked ${loss} loss and gradients for every weight of a ${dims}D ${blurPool ? `N2V2 U-Net (${blurPool} max-blur-pool)` : 'U-Net'}${batchNorm ? ' with batch norm, and its moving statistics' : ''}`, async () => {
      const depth = dims === 2 ? 2 : 1;
      const model = buildUNet({ dims, depth, filters: dims === 2 ? 8 : 4, kernelSize: 3, batchNorm, init: 'torch', ...(blurPool ? { variant: 'n2v2', blurPool } : { variant: 'n2v' }) }, 5);
      const batch = realisticBatch(dims === 2 ? 4 : 2, dims === 2 ? [32, 32] : [8, 16, 16], 7);
      const variables = model.trainableWeights.map((w) => w.read() as tf.Variable);
      const stateBefore = model.nonTrainableWeights.map((w) => w.read().dataSync() as Float32Array);
      // Two moving statistics per batch norm, one after each conv but the output's: 4 per level down and up, 2 at the bottom.
      expect(stateBefore.length).toBe(batchNorm ? 2 * (4 * depth + 2) : 0);
      const reference = tf.variableGrads(
        () => maskedLoss(model.apply(tf.tensor(batch.inputs, batch.shape), { training: true }) as tf.Tensor, tf.tensor(batch.targets, batch.shape), tf.tensor(batch.masks, batch.shape), loss),
        variables,
      );
      const engine = await openOnnxGradientEngine(model, { loss, threads: 1 });
      const ours = await engine.gradients(batch, variables.map((v) => v.dataSync() as Float32Array), stateBefore);
      await engine.dispose();
      // tfjs' forward pass above moved the statistics as the layer does; the graph returns the same values.
      model.nonTrainableWeights.forEach((w, j) => {
        const moved = w.read().dataSync();
        expect(relativeError(moved, stateBefore[j]), w.name).toBeGreaterThan(1e-3);
        expect(relativeError(moved, ours.state[j]), w.name).toBeLessThan(1e-5);
      });
      expect(Math.abs(ours.loss - reference.value.dataSync()[0])).toBeLessThan(1e-5 * Math.abs(ours.loss));
      expect(ours.gradients.length).toBe(variables.length);
      variables.forEach((v, i) => {
        const expected = reference.grads[v.name].dataSync();
        expect(ours.gradients[i].length).toBe(expected.length);
        // float32 sums in another order: a few ulps of the norm, nowhere near a wrong layout or sign.
        expect(relativeError(expected, ours.gradients[i]), model.trainableWeights[i].name).toBeLessThan(1e-5);
      });
      tf.dispose([reference.value, ...Object.values(reference.grads)]);
      model.dispose();
    });
  }

  for (const dims of [2, 3] as const) {
    it(`gives tfjs' masked mse loss and gradients of a ${dims}D laine19 network (rotations, row shifts, leaky ReLU, weights shared by ${dims === 2 ? 4 : 6} branches)`, async () => {
      const model = buildLaine19({ dims, depth: dims === 2 ? 2 : 1, filters: 4 }, 21);
      const batch = realisticBatch(dims === 2 ? 4 : 2, dims === 2 ? [32, 32] : [4, 16, 16], 22);
      batch.masks.fill(1);
      const variables = model.trainableWeights.map((w) => w.read() as tf.Variable);
      const reference = tf.variableGrads(
        () => maskedLoss(model.apply(tf.tensor(batch.inputs, batch.shape), { training: true }) as tf.Tensor, tf.tensor(batch.targets, batch.shape), tf.tensor(batch.masks, batch.shape), 'mse'),
        variables,
      );
      const engine = await openOnnxGradientEngine(model, { loss: 'mse', threads: 1 });
      const ours = await engine.gradients(batch, variables.map((v) => v.dataSync() as Float32Array), []);
      await engine.dispose();
      expect(Math.abs(ours.loss - reference.value.dataSync()[0])).toBeLessThan(1e-5 * Math.abs(ours.loss));
      variables.forEach((v, i) => expect(relativeError(reference.grads[v.name].dataSync(), ours.gradients[i]), model.trainableWeights[i].name).toBeLessThan(1e-5));
      tf.dispose([reference.value, ...Object.values(reference.grads)]);
      model.dispose();
    });
  }

  // neighbor2neighbor: full resolution, then the sub-image; noise2info: the unmasked patch, then the masked one.
  // noise2info at initialisation: F(X) and F(X_J^c) differ by about 1e-3, so L_ex's weight sigma / sqrt(I)
  // is about 1200 and its two passes' gradients, each that much larger than the loss's, cancel; tfjs
  // summing the rewritten terms itself differs from its batchLoss by the same 1e-5 (float32 rounding
  // of the difference), so 1e-4 there. A wrong term or sign is off by 1e-1 or more.
  const rewritten = [
    { method: neighbor2neighbor, tolerance: 1e-5 },
    { method: noise2info, tolerance: 1e-4 },
  ];
  for (const { method, tolerance } of rewritten) {
    for (const { dims, batchNorm } of [{ dims: 2, batchNorm: true }, { dims: 3, batchNorm: false }] as const) {
      it(`computes ${method.name}'s own loss through its rewrite as tfjs does (${dims}D${batchNorm ? ', batch norm, moving statistics after both passes' : ''})`, async () => {
        const model = buildUNet({ dims, depth: 1, filters: 4, kernelSize: 3, batchNorm, variant: 'n2v', init: 'torch' }, 9);
        const noisy = realisticBatch(dims === 2 ? 4 : 2, dims === 2 ? [32, 32] : [4, 16, 16], 11);
        // The method's own patches: its input, target and mask for each noisy patch.
        const per = noisy.inputs.length / noisy.shape[0];
        const batch = { shape: noisy.shape, inputs: new Float32Array(noisy.inputs.length), targets: new Float32Array(noisy.inputs.length), masks: new Float32Array(noisy.inputs.length) };
        const rng = new Rng(12);
        for (let b = 0; b < noisy.shape[0]; b++) {
          const data = noisy.targets.subarray(b * per, (b + 1) * per);
          const patch = method.preparePatch({ step: b, shape: noisy.shape.slice(1, -1) as never, data, rng }, { grid: 4, seed: 3 } as PatchPreparation);
          batch.inputs.set(patch.input, b * per);
          batch.targets.set(patch.target, b * per);
          batch.masks.set(patch.mask, b * per);
        }
        const methodRun = method.training({ seed: 1, grid: 4, maskedLoss: (p, t, m) => maskedLoss(p, t, m, 'mse') });
        const chosen = await openTrainEngine({ engine: 'onnx', model, methodName: method.name, methodRun, loss: 'mse', threads: 1 });
        const variables = model.trainableWeights.map((w) => w.read() as tf.Variable);
        const stateBefore = model.nonTrainableWeights.map((w) => w.read().dataSync() as Float32Array);
        const ours = await chosen.engine!.gradients(batch, variables.map((v) => v.dataSync() as Float32Array), stateBefore);
        await chosen.engine!.dispose();
        const apply = (x: tf.Tensor): tf.Tensor => model.apply(x, { training: true }) as tf.Tensor;
        const reference = tf.variableGrads(() => methodRun.batchLoss(apply, tf.tensor(batch.inputs, batch.shape), tf.tensor(batch.targets, batch.shape), tf.tensor(batch.masks, batch.shape)), variables);
        expect(Math.abs(ours.loss - reference.value.dataSync()[0])).toBeLessThan(1e-5 * Math.abs(ours.loss));
        variables.forEach((v, i) => expect(relativeError(reference.grads[v.name].dataSync(), ours.gradients[i]), model.trainableWeights[i].name).toBeLessThan(tolerance));
        // tfjs ran the network twice: the statistics moved twice, and ours with them.
        expect(ours.state.length).toBe(batchNorm ? 2 * 6 : 0);
        model.nonTrainableWeights.forEach((w, j) => expect(relativeError(w.read().dataSync(), ours.state[j]), w.name).toBeLessThan(1e-5));
        tf.dispose([reference.value, ...Object.values(reference.grads)]);
        model.dispose();
      });
    }
  }

  // A loss on the network's output computed by tfjs, its gradient back through the network on ONNX Runtime.
  /** The trainer's context for a Gaussian prior with a learned noise level (its log sigma an extra variable). */
  const learnedPrior = (): { context: TrainingContext; extras: tf.Variable[] } => {
    const logSigma = tf.variable(tf.scalar(Math.log(0.4)));
    return { context: { seed: 1, grid: 4, maskedLoss: gaussianPriorLoss(learnedNoiseVariance(logSigma)) }, extras: [logSigma] };
  };
  const outputLosses = [
    { what: "a Gaussian prior's NLL (two output channels) and its learned noise level", outputChannels: 2, context: learnedPrior, method: n2v },
    {
      what: "laine19's four rotated branches with shared weights, a Gaussian prior's NLL and its learned noise level",
      outputChannels: 2,
      network: 'laine19',
      context: learnedPrior,
      method: laine19,
    },
    {
      what: "D-BSN's centre-masked and dilated convolutions and its NLL under a given noise variance",
      outputChannels: 2,
      network: 'dbsn',
      context: (): { context: TrainingContext; extras: tf.Variable[] } => ({
        context: { seed: 1, grid: 4, maskedLoss: (p, t, m) => maskedLoss(p, t, m, 'mse'), noiseVariance: (mu) => tf.fill(mu.shape, 0.25) },
        extras: [],
      }),
      method: dbsn,
    },
    {
      what: "PN2V's likelihood of its prior samples (8 output channels)",
      outputChannels: 8,
      context: (): { context: TrainingContext; extras: tf.Variable[] } => ({
        context: { seed: 1, grid: 4, maskedLoss: (p, t, m) => maskedLoss(p, t, m, 'mse'), noiseLikelihood: normalisedNoiseLikelihood({ spec: { kind: 'gaussian', sigma: 15 } }, { mode: 'meanstd', offset: 0, scale: 30 }) },
        extras: [],
      }),
      method: pn2v,
    },
    {
      what: "DivNoising's ELBO: its VAE's sampled latent code (the layer's eps fed to the graph), the KL, the noise model's likelihood",
      outputChannels: 2,
      network: 'vae',
      context: (): { context: TrainingContext; extras: tf.Variable[] } => ({
        context: { seed: 1, grid: 4, maskedLoss: (p, t, m) => maskedLoss(p, t, m, 'mse'), noiseLikelihood: normalisedNoiseLikelihood({ spec: { kind: 'gaussian', sigma: 15 } }, { mode: 'meanstd', offset: 0, scale: 30 }) },
        extras: [],
      }),
      method: divnoising,
    },
  ];
  for (const { what, outputChannels, context, method, ...rest } of outputLosses) {
    const network = 'network' in rest ? rest.network : 'unet';
    for (const { dims, batchNorm } of [{ dims: 2, batchNorm: network === 'unet' }, { dims: 3, batchNorm: false }] as const) {
      it(`gives tfjs' gradients of ${what} (${dims}D${batchNorm ? ', batch norm, moving statistics moved once' : ''})`, async () => {
        const build = (): tfl.LayersModel => {
          const built =
            network === 'laine19' ? buildLaine19({ dims, depth: dims === 2 ? 2 : 1, filters: 4, outputChannels }, 13)
            : network === 'dbsn' ? buildDbsn({ dims, filters: 4, blocks: 2, outputChannels }, 13)
            : network === 'vae' ? buildVae({ dims, depth: 1, filters: 4, latentChannels: 2 }, 13)
            : buildUNet({ dims, depth: 1, filters: 4, kernelSize: 3, batchNorm, variant: 'n2v', init: 'torch', outputChannels }, 13);
          // D-BSN's residual blocks start as the identity (zero pointwise kernels), which would leave its
          // dilated convolutions without gradient: give those kernels values.
          if (network === 'dbsn') {
            built.trainableWeights.filter((w) => /pointwise/.test(w.name) && w.shape.length > 1).forEach((w, i) => w.write(tf.randomNormal(w.shape as number[], 0, 0.2, 'float32', 31 + i)));
          }
          // The VAE's first log variance channel near its upper clip, so that the clip bites at some positions only.
          if (network === 'vae') built.getLayer('latent').setWeights([built.getLayer('latent').getWeights()[0], tf.tensor1d([0, 0, 18, 0])]);
          return built;
        };
        const model = build();
        // The VAE draws a new eps per training-mode call: the tfjs reference runs a twin, whose first draw is the engine's.
        const twin = network === 'vae' ? build() : model;
        const batch = realisticBatch(dims === 2 ? 4 : 2, dims === 2 ? [32, 32] : [4, 16, 16], 14);
        // laine19, D-BSN and the VAE score every pixel (the first two have their blind spot in the network).
        if (network !== 'unet') batch.masks.fill(1);
        const { context: ctx, extras } = context();
        const methodRun = method.training(ctx);
        expect(methodRun.outputLoss).toBeDefined();
        const chosen = await openTrainEngine({ engine: 'onnx', model, methodName: method.name, methodRun, loss: outputChannels === 2 && network !== 'vae' ? 'prior' : 'mse', threads: 1, extraVariables: () => extras });
        expect(chosen.describe).toMatch(/the loss on the output on tfjs/);
        const variables = model.trainableWeights.map((w) => w.read() as tf.Variable);
        const stateBefore = model.nonTrainableWeights.map((w) => w.read().dataSync() as Float32Array);
        const ours = await chosen.engine!.gradients(batch, variables.map((v) => v.dataSync() as Float32Array), stateBefore);
        await chosen.engine!.dispose();
        const apply = (x: tf.Tensor): tf.Tensor => twin.apply(x, { training: true }) as tf.Tensor;
        const twinVariables = twin.trainableWeights.map((w) => w.read() as tf.Variable);
        const reference = tf.variableGrads(() => methodRun.batchLoss(apply, tf.tensor(batch.inputs, batch.shape), tf.tensor(batch.targets, batch.shape), tf.tensor(batch.masks, batch.shape)), [...twinVariables, ...extras]);
        expect(Math.abs(ours.loss - reference.value.dataSync()[0])).toBeLessThan(1e-5 * Math.abs(ours.loss));
        twinVariables.forEach((v, i) => expect(relativeError(reference.grads[v.name].dataSync(), ours.gradients[i]), model.trainableWeights[i].name).toBeLessThan(1e-5));
        expect(ours.extraGradients?.length ?? 0).toBe(extras.length);
        extras.forEach((v, k) => {
          const expected = reference.grads[v.name].dataSync()[0];
          expect(Math.abs(expected)).toBeGreaterThan(1e-3);
          expect(Math.abs(ours.extraGradients![k][0] - expected)).toBeLessThan(1e-5 * Math.abs(expected));
        });
        // tfjs ran the network once: the statistics moved once, as the engine's forward pass moved them.
        model.nonTrainableWeights.forEach((w, j) => expect(relativeError(w.read().dataSync(), ours.state[j]), w.name).toBeLessThan(1e-5));
        tf.dispose([reference.value, ...Object.values(reference.grads), ...extras]);
        model.dispose();
        if (twin !== model) twin.dispose();
      });
    }
  }

  it("keeps a loss of a method's own on tfjs under auto, and refuses it under onnx, saying why", async () => {
    const model = buildUNet({ dims: 2, depth: 1, filters: 4, kernelSize: 3, batchNorm: false, variant: 'n2v', init: 'torch' }, 13);
    // Neither a masked loss nor a loss on the output: only tfjs can differentiate it.
    const methodRun = { batchLoss: (apply: (x: tf.Tensor) => tf.Tensor, inputs: tf.Tensor) => tf.mean(tf.square(apply(inputs))) as tf.Scalar };
    const request = { model, methodName: 'own', methodRun, loss: 'mse' as const, threads: 1 };
    const auto = await openTrainEngine({ ...request, engine: 'auto' });
    expect(auto.engine).toBeUndefined();
    expect(auto.describe).toMatch(/^gradients on tfjs \(cpu\): own's loss is its own/);
    await expect(openTrainEngine({ ...request, engine: 'onnx' })).rejects.toThrow(/--train-engine onnx cannot train this run: own's loss is its own.*use --train-engine tfjs/);
    model.dispose();
  });

  it('refuses a layer it has no gradient for, naming it', async () => {
    const input = tfl.input({ shape: [null, null, 1] });
    const output = tfl.layers.conv2d({ filters: 1, kernelSize: 3, padding: 'same', activation: 'tanh', name: 'tanh_conv' }).apply(input) as tfl.SymbolicTensor;
    const model = tfl.model({ inputs: input, outputs: output });
    await expect(openOnnxGradientEngine(model, { loss: 'mse' })).rejects.toThrow(UnsupportedLayerError);
    await expect(openOnnxGradientEngine(model, { loss: 'mse' })).rejects.toThrow(/tanh_conv.*activation 'tanh'/);
    model.dispose();
  });
});

