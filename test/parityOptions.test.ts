/**
 * Wiring of the switches that make n2v train like the PyTorch reference (docs/parity.md): U-Net
 * widths, PyTorch initialisation, batch-norm epsilon, Adam epsilon and a constant learning rate.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { beforeAll, describe, expect, it } from 'vitest';
import { buildUNet, type UNetConfig } from '../models/unet.js';
import { createAdam } from '../models/optimizer.js';
import { getMethod } from '../methods/registry.js';
import { trainModel } from '../pipeline/train.js';
import { UsageError } from '../core/errors.js';
import { Rng } from '../core/rng.js';
import { networkOverridesOption } from '../cli/options.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
  await tf.ready();
});

const base: UNetConfig = { dims: 2, depth: 2, filters: 4, kernelSize: 3, batchNorm: true, variant: 'n2v' };
const convFilters = (cfg: UNetConfig): Record<string, number> =>
  Object.fromEntries(buildUNet(cfg, 1).layers.filter((l) => l.name.endsWith('_conv')).map((l) => [l.name.replace(/_conv$/, ''), (l.getConfig() as { filters: number }).filters]));

describe('U-Net parity switches', () => {
  it("widths 'level' keeps every conv at its level's width; the default halves the last of the bottom and decoder levels", () => {
    const halving = convFilters(base);
    const level = convFilters({ ...base, widths: 'level' });
    expect([halving.bottom_1, halving.up1_1, halving.up0_1]).toEqual([8, 4, 4]);
    expect([level.bottom_1, level.up1_1, level.up0_1]).toEqual([16, 8, 4]);
    expect(level.down0_0).toBe(halving.down0_0);
  });

  it("init 'torch' draws kernels and biases from +-1/sqrt(fan_in); batchNormEpsilon reaches every batch norm", () => {
    const model = buildUNet({ ...base, batchNorm: false, init: 'torch' }, 3);
    const conv = model.getLayer('down1_0_conv');
    const [kernel, bias] = conv.getWeights();
    const bound = 1 / Math.sqrt(3 * 3 * 4);
    const k = kernel.dataSync();
    expect(Math.max(...k.map(Math.abs))).toBeLessThanOrEqual(bound);
    // Uniform on +-bound: the largest of 288 draws is close to the bound (glorot's would exceed it: sqrt(6/(36+72)) = 0.236 > 0.167).
    expect(Math.max(...k.map(Math.abs))).toBeGreaterThan(0.9 * bound);
    expect(bias.dataSync().some((b) => b !== 0)).toBe(true);
    expect(Math.max(...bias.dataSync().map(Math.abs))).toBeLessThanOrEqual(bound);
    const glorot = buildUNet({ ...base, batchNorm: false }, 3).getLayer('down1_0_conv').getWeights()[1].dataSync();
    expect(glorot.every((b) => b === 0)).toBe(true);
    const withBn = buildUNet({ ...base, batchNormEpsilon: 1e-5 }, 1);
    const epsilons = withBn.layers.filter((l) => l.name.endsWith('_bn')).map((l) => (l.getConfig() as { epsilon: number }).epsilon);
    expect(epsilons.length).toBeGreaterThan(0);
    expect(new Set(epsilons)).toEqual(new Set([1e-5]));
  });

  it('n2v passes the new overrides to its network and refuses them for networks without them', () => {
    const request = { dims: 2 as const, size: 'small' as const, batchSize: 16, twoChannels: false, overrides: { widths: 'level' as const, init: 'torch' as const, batchNormEpsilon: 1e-5 } };
    expect(getMethod('n2v').network(request)).toMatchObject({ widths: 'level', init: 'torch', batchNormEpsilon: 1e-5 });
    expect(() => getMethod('laine19').network(request)).toThrow(UsageError);
    // PyTorch's initialisation is the default of every U-Net method; --init glorot gives the old one.
    for (const method of ['n2v', 'n2v2', 'noise2self', 'neighbor2neighbor'] as const) {
      expect(getMethod(method).network({ ...request, overrides: {} }), method).toMatchObject({ init: 'torch' });
      expect(getMethod(method).network({ ...request, overrides: { init: 'glorot' } }), method).toMatchObject({ init: 'glorot' });
    }
  });

  it('the CLI parses --widths, --init and --batch-norm-epsilon into the overrides and refuses unknown values', () => {
    expect(networkOverridesOption({ widths: 'level', init: 'torch', 'batch-norm-epsilon': '1e-5' })).toEqual({ widths: 'level', init: 'torch', batchNormEpsilon: 1e-5 });
    expect(networkOverridesOption({})).toEqual({});
    expect(() => networkOverridesOption({ widths: 'wide' })).toThrow(UsageError);
    expect(() => networkOverridesOption({ init: 'he' })).toThrow(UsageError);
  });

  it('createAdam takes an epsilon; without one it is the backend epsilon', () => {
    expect(createAdam(1e-3, 1e-8).epsilon).toBe(1e-8);
    expect(createAdam(1e-3).epsilon).toBe(tf.backend().epsilon());
  });
});

describe('train: constant learning rate and Adam epsilon', () => {
  it('keeps the learning rate with a constant schedule where plateau halves it, and records both in the manifest', async () => {
    const rng = new Rng(5);
    const data = new Float32Array(32 * 32).map(() => rng.normal());
    const run = async (schedule: 'plateau' | 'constant') => {
      const out = await fs.mkdtemp(path.join(os.tmpdir(), 'blindspot-parity-test-'));
      const rates: number[] = [];
      try {
        const manifest = await trainModel({
          volumes: [{ volume: { data, shape: [32, 32], sampleType: 'float32' }, name: 'noise' }],
          out,
          steps: 6,
          batchSize: 2,
          patchShape: [16, 16],
          network: { filters: 2, depth: 1 },
          validateEvery: 1,
          patience: 1,
          valFraction: 0,
          learningRateSchedule: schedule,
          adamEpsilon: 1e-8,
          noiseFits: false,
          classicalCheck: false,
          onEvent: (e) => {
            if (e.type === 'validation') rates.push(e.learningRate);
          },
        });
        return { rates, manifest };
      } finally {
        await fs.rm(out, { recursive: true, force: true });
      }
    };
    const constant = await run('constant');
    expect(new Set(constant.rates)).toEqual(new Set([4e-4]));
    expect(constant.manifest.training).toMatchObject({ learningRateSchedule: 'constant', adamEpsilon: 1e-8 });
    // Pure noise: validation rarely improves 6 times in a row, so the plateau schedule halves at least once.
    const plateau = await run('plateau');
    expect(Math.min(...plateau.rates)).toBeLessThan(4e-4);
    expect(plateau.manifest.training.learningRateSchedule).toBeUndefined();
  }, 60_000);
});
