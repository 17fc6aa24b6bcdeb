/**
 * The learning-rate schedules of the training loop, as pure functions of the run's progress, so a
 * resumed run lands on the same rate as an uninterrupted one.
 */

export type LearningRateSchedule = 'plateau' | 'constant' | 'cosine';
export const LEARNING_RATE_SCHEDULES: readonly LearningRateSchedule[] = ['plateau', 'constant', 'cosine'];

/** Cosine annealing ends here, as a fraction of the base rate: the last steps still move the weights. */
export const COSINE_FINAL_FRACTION = 0.01;

/**
 * How far a run is, in [0, 1]: the larger of steps done over the step count and seconds spent over
 * the time budget, so a run bounded by either anneals to its end. An unbounded count (a budget
 * alone) counts only the clock.
 */
export function runProgress(run: { stepsDone: number; steps: number; wallSeconds: number; budgetSeconds?: number }): number {
  const byStep = Number.isSafeInteger(run.steps) && run.steps < Number.MAX_SAFE_INTEGER ? run.stepsDone / run.steps : 0;
  const byClock = run.budgetSeconds !== undefined ? run.wallSeconds / run.budgetSeconds : 0;
  return Math.min(1, Math.max(0, byStep, byClock));
}

/**
 * Cosine annealing (Loshchilov & Hutter, SGDR, 2017, without restarts): from the base rate at
 * progress 0 to COSINE_FINAL_FRACTION of it at progress 1. Under a wall-clock budget this is what
 * lets the last minutes average out the gradient noise a constant rate leaves in the weights.
 */
export function cosineLearningRate(baseRate: number, progress: number): number {
  const p = Math.min(1, Math.max(0, progress));
  const final = baseRate * COSINE_FINAL_FRACTION;
  return final + (baseRate - final) * 0.5 * (1 + Math.cos(Math.PI * p));
}
