/**
 * Cosine annealing of the learning rate: the pure schedule, and the training loop following it by
 * steps, by the wall-clock budget, and across an interruption.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cosineLearningRate, COSINE_FINAL_FRACTION, runProgress } from '../pipeline/learningRateSchedule.js';
import { trainModel, TrainingInterrupted, type TrainOptions } from '../pipeline/train.js';
import { trainingSchedule } from '../cli/options.js';
import { UsageError } from '../core/errors.js';
import { Rng } from '../core/rng.js';

let tmp: string;
beforeAll(async () => {
  await tf.setBackend('cpu');
  await tf.ready();
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'blindspot-lr-schedule-'));
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

describe('cosine schedule', () => {
  it('runs from the base rate to 1% of it, halfway at the middle, and clamps progress', () => {
    expect(cosineLearningRate(1e-3, 0)).toBeCloseTo(1e-3, 12);
    expect(cosineLearningRate(1e-3, 1)).toBeCloseTo(1e-3 * COSINE_FINAL_FRACTION, 12);
    expect(cosineLearningRate(1e-3, 0.5)).toBeCloseTo((1e-3 + 1e-5) / 2, 12);
    expect(cosineLearningRate(1e-3, 2)).toBe(cosineLearningRate(1e-3, 1));
    expect(cosineLearningRate(1e-3, -1)).toBe(cosineLearningRate(1e-3, 0));
    const rates = [0, 0.1, 0.3, 0.6, 0.9].map((p) => cosineLearningRate(1e-3, p));
    for (let i = 1; i < rates.length; i++) expect(rates[i]).toBeLessThan(rates[i - 1]);
  });

  it('measures progress by steps or by the clock, whichever is further, and the clock alone under an unbounded count', () => {
    expect(runProgress({ stepsDone: 25, steps: 100, wallSeconds: 10, budgetSeconds: 20 })).toBe(0.5);
    expect(runProgress({ stepsDone: 75, steps: 100, wallSeconds: 10, budgetSeconds: 20 })).toBe(0.75);
    expect(runProgress({ stepsDone: 75, steps: 100, wallSeconds: 1 })).toBe(0.75);
    expect(runProgress({ stepsDone: 10 ** 6, steps: Number.MAX_SAFE_INTEGER, wallSeconds: 30, budgetSeconds: 120 })).toBe(0.25);
    expect(runProgress({ stepsDone: 3, steps: 2, wallSeconds: 300, budgetSeconds: 120 })).toBe(1);
  });

  it('the CLI takes --lr-schedule cosine and refuses an unknown schedule', () => {
    expect(trainingSchedule({ 'lr-schedule': 'cosine' }).learningRateSchedule).toBe('cosine');
    expect(() => trainingSchedule({ 'lr-schedule': 'linear' })).toThrow(UsageError);
  });
});

describe('train with a cosine schedule', () => {
  const rng = new Rng(9);
  const data = new Float32Array(32 * 32).map(() => rng.normal());
  const options = (out: string, extra: Partial<TrainOptions> = {}): TrainOptions => ({
    volumes: [{ volume: { data, shape: [32, 32], sampleType: 'float32' }, name: 'noise' }],
    out,
    steps: 12,
    batchSize: 2,
    patchShape: [16, 16],
    network: { filters: 2, depth: 1 },
    learningRate: 1e-3,
    learningRateSchedule: 'cosine',
    validateEvery: 4,
    patience: 1,
    valFraction: 0,
    seed: 4,
    noiseFits: false,
    classicalCheck: false,
    ...extra,
  });

  it('anneals step by step over --steps, never halves on a plateau, records the schedule, and resumes on the same rates', async () => {
    const manifest = await trainModel(options(path.join(tmp, 'steps')));
    const rates = manifest.history.map((h) => h.learningRate);
    // Step k (1-based) trained at the rate of progress (k - 1) / steps.
    expect(rates).toEqual(rates.map((_, i) => cosineLearningRate(1e-3, i / 12)));
    expect(manifest.training.learningRateSchedule).toBe('cosine');

    const out = path.join(tmp, 'resume');
    const controller = new AbortController();
    await expect(
      trainModel(options(out, { signal: controller.signal, onEvent: (e) => e.type === 'step' && e.step === 5 && controller.abort() })),
    ).rejects.toBeInstanceOf(TrainingInterrupted);
    const resumed = await trainModel(options(out, { resume: true }));
    expect(resumed.history.map((h) => h.learningRate)).toEqual(rates);
  }, 120_000);

  it('under a time budget without a step count, anneals by the clock', async () => {
    const manifest = await trainModel(options(path.join(tmp, 'budget'), { steps: undefined, timeBudgetSeconds: 3, validateEvery: 20 }));
    const { history } = manifest;
    expect(history.length).toBeGreaterThan(5);
    const rates = history.map((h) => h.learningRate);
    for (let i = 1; i < rates.length; i++) expect(rates[i]).toBeLessThanOrEqual(rates[i - 1]);
    // The last step's rate is the one its predecessor's clock gave: near the end of the budget, far below the base.
    const last = history[history.length - 1];
    const previous = history[history.length - 2];
    expect(last.learningRate).toBeCloseTo(cosineLearningRate(1e-3, previous.seconds / 3), 8);
    expect(last.learningRate).toBeLessThan(0.2e-3);
  }, 120_000);
});
