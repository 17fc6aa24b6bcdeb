/**
 * The Gaussian mixture noise model of PN2V / DivNoising (Krull et al. 2020; Prakash et al. 2020):
 *
 *   p(x | s) = sum_k w_k(s) N(x; mu_k(s), var_k(s)),
 *
 * K Gaussians whose weights, means and variances are polynomials of degree D in the signal s:
 *   t        = clamp((s - signalRange[0]) / (signalRange[1] - signalRange[0]), 0, 1)
 *   w_k      = softmax_k(P^w_k(t))
 *   o_k      = residualScale * P^o_k(t),       mu_k = s + o_k - sum_j w_j o_j
 *   var_k    = minVariance + residualScale^2 * softplus(SHARPNESS * P^v_k(t)) / SHARPNESS
 * The means are offsets from s, recentred (as PN2V does) so that the mixture's mean is exactly s:
 * the model describes noise, not a bias. The variance is floored by minVariance; the sharp softplus
 * (instead of PN2V's exp) makes var_k linear in P^v_k above the floor, so a degree-1 polynomial is
 * exactly Poisson-Gaussian (var = a s + b) and the fit needs no curvature to express it.
 * Outside the fitted signal range t is clamped: the mixture's shape is that at the nearest end.
 *
 * Evaluation is here twice on purpose: in plain JS (mean, variance, sampling, per-value likelihood:
 * no tfjs needed to read a model) and as tfjs ops (`gmmLogLikelihood`), differentiable in the
 * signal, the observation and the coefficients, for fitting (noise/gmmFit.ts) and for losses.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { Rng } from '../core/rng.js';

/** Slope of the soft floor of the variance polynomial (in residualScale^2 units): linear above ~3 / SHARPNESS. */
export const VARIANCE_SHARPNESS = 100;

export interface GmmNoiseModel {
  format: 'blindspot-noise-model';
  version: 1;
  kind: 'gmm';
  /** The file(s) the pairs came from. */
  source: string;
  /** Where the pseudo-clean signal came from: the mean of calibration frames, or a trained denoiser's output. */
  signalFrom: 'frame-mean' | 'denoised';
  /** K. */
  components: number;
  /** D: each polynomial has D + 1 coefficients. */
  degree: number;
  /** [min, max] of the signal the model was fitted on, input units. */
  signalRange: [number, number];
  /** Unit of the offsets (input units) and, squared, of the variances. */
  residualScale: number;
  /** Floor of every component's variance, input units^2. */
  minVariance: number;
  /** [K][D + 1] coefficients, lowest power first, of the weight logits, offsets and variances. */
  weightCoefficients: number[][];
  offsetCoefficients: number[][];
  varianceCoefficients: number[][];
  /** Poisson-Gaussian summary var = a s + b (least squares on the model's variance over the fitted signals). */
  a: number;
  b: number;
  /** Observations left out of the pairs: clipped at the sample type's limits, or not finite. */
  excludedObservations: { clipped: number; nonFinite: number };
  /** How it was fitted (provenance; not needed to evaluate it). */
  fit: {
    pairs: number;
    iterations: number;
    batchSize: number;
    learningRate: number;
    seed: number;
    /** Mean -log p(x|s) per pair on a fixed sample of up to 65,536 of the pairs (not held out), input units. */
    negLogLikelihood: number;
  };
}

/** The mixture at one signal value: K weights (sum 1), means and variances, input units. */
export interface GmmComponents {
  weights: Float64Array;
  means: Float64Array;
  variances: Float64Array;
}

function softplus(v: number): number {
  return v > 30 ? v : Math.log1p(Math.exp(v));
}

function polynomial(coefficients: readonly number[], t: number): number {
  let v = 0;
  for (let d = coefficients.length - 1; d >= 0; d--) v = v * t + coefficients[d];
  return v;
}

/** Normalised signal coordinate of the polynomials. */
export function gmmSignalCoordinate(model: GmmNoiseModel, s: number): number {
  const [lo, hi] = model.signalRange;
  const t = (s - lo) / (hi - lo);
  return t < 0 ? 0 : t > 1 ? 1 : t;
}

/** The mixture's components at signal s (into `out` when given, to sample without allocating). */
export function gmmComponents(model: GmmNoiseModel, s: number, out?: GmmComponents): GmmComponents {
  const K = model.components;
  const c = out ?? { weights: new Float64Array(K), means: new Float64Array(K), variances: new Float64Array(K) };
  const t = gmmSignalCoordinate(model, s);
  let maxLogit = -Infinity;
  for (let k = 0; k < K; k++) {
    c.weights[k] = polynomial(model.weightCoefficients[k], t);
    if (c.weights[k] > maxLogit) maxLogit = c.weights[k];
  }
  let sum = 0;
  for (let k = 0; k < K; k++) {
    c.weights[k] = Math.exp(c.weights[k] - maxLogit);
    sum += c.weights[k];
  }
  let meanOffset = 0;
  for (let k = 0; k < K; k++) {
    c.weights[k] /= sum;
    c.means[k] = model.residualScale * polynomial(model.offsetCoefficients[k], t);
    meanOffset += c.weights[k] * c.means[k];
    c.variances[k] = model.minVariance + (model.residualScale ** 2 * softplus(VARIANCE_SHARPNESS * polynomial(model.varianceCoefficients[k], t))) / VARIANCE_SHARPNESS;
  }
  for (let k = 0; k < K; k++) c.means[k] = s + c.means[k] - meanOffset;
  return c;
}

/** E[x | s]: s itself by construction (the offsets are recentred), computed rather than assumed. */
export function gmmMean(model: GmmNoiseModel, s: number): number {
  const c = gmmComponents(model, s);
  let m = 0;
  for (let k = 0; k < model.components; k++) m += c.weights[k] * c.means[k];
  return m;
}

/** Var[x | s] = sum_k w_k (var_k + (mu_k - s)^2), input units^2. */
export function gmmVariance(model: GmmNoiseModel, s: number): number {
  const c = gmmComponents(model, s);
  let m = 0;
  for (let k = 0; k < model.components; k++) m += c.weights[k] * c.means[k];
  let v = 0;
  for (let k = 0; k < model.components; k++) v += c.weights[k] * (c.variances[k] + (c.means[k] - m) ** 2);
  return v;
}

/** log p(x | s) of one pair, in plain JS (log-sum-exp over the components). */
export function gmmLogDensity(model: GmmNoiseModel, s: number, x: number): number {
  const c = gmmComponents(model, s);
  let max = -Infinity;
  const terms = new Float64Array(model.components);
  for (let k = 0; k < model.components; k++) {
    terms[k] = Math.log(c.weights[k]) - 0.5 * Math.log(2 * Math.PI * c.variances[k]) - (x - c.means[k]) ** 2 / (2 * c.variances[k]);
    if (terms[k] > max) max = terms[k];
  }
  let sum = 0;
  for (let k = 0; k < model.components; k++) sum += Math.exp(terms[k] - max);
  return max + Math.log(sum);
}

/** Draws x ~ p(x | s) for every signal value, from `rng` (same seed, same samples). */
export function sampleGmm(model: GmmNoiseModel, signal: ArrayLike<number>, rng: Rng): Float32Array {
  const out = new Float32Array(signal.length);
  const K = model.components;
  const c: GmmComponents = { weights: new Float64Array(K), means: new Float64Array(K), variances: new Float64Array(K) };
  for (let i = 0; i < signal.length; i++) {
    gmmComponents(model, signal[i], c);
    const u = rng.uniform();
    let k = 0;
    for (let acc = c.weights[0]; k < K - 1 && u >= acc; acc += c.weights[++k]);
    out[i] = c.means[k] + Math.sqrt(c.variances[k]) * rng.normal();
  }
  return out;
}

/** The coefficient matrices as tensors [D + 1, K] (variables while fitting; constants from a model). */
export interface GmmCoefficientTensors {
  weight: tf.Tensor2D;
  offset: tf.Tensor2D;
  variance: tf.Tensor2D;
}

/** The fixed, non-fitted part of a model. */
export type GmmConstants = Pick<GmmNoiseModel, 'components' | 'degree' | 'signalRange' | 'residualScale' | 'minVariance'>;

/** A model's coefficients as tensors [D + 1, K] (the caller disposes them). */
export function gmmCoefficientTensors(model: GmmNoiseModel): GmmCoefficientTensors {
  const transpose = (rows: number[][]): tf.Tensor2D =>
    tf.tensor2d(Array.from({ length: model.degree + 1 }, (_, d) => rows.map((row) => row[d])), [model.degree + 1, model.components]);
  return { weight: transpose(model.weightCoefficients), offset: transpose(model.offsetCoefficients), variance: transpose(model.varianceCoefficients) };
}

/**
 * log p(x | s) elementwise, as tfjs ops: `signal` and `observation` of one shape, input units; the
 * result has that shape. Differentiable in both inputs and in the coefficients. Pass a model (its
 * coefficients become constants, disposed here) or constants and coefficient tensors.
 */
export function gmmLogLikelihood(model: GmmNoiseModel, signal: tf.Tensor, observation: tf.Tensor): tf.Tensor;
export function gmmLogLikelihood(constants: GmmConstants, signal: tf.Tensor, observation: tf.Tensor, coefficients: GmmCoefficientTensors): tf.Tensor;
export function gmmLogLikelihood(constants: GmmConstants | GmmNoiseModel, signal: tf.Tensor, observation: tf.Tensor, coefficients?: GmmCoefficientTensors): tf.Tensor {
  return tf.tidy(() => {
    const coeffs = coefficients ?? gmmCoefficientTensors(constants as GmmNoiseModel);
    const shape = signal.shape;
    const s = tf.reshape(signal, [-1, 1]);
    const x = tf.reshape(observation, [-1, 1]);
    const [lo, hi] = constants.signalRange;
    const t = tf.clipByValue(tf.div(tf.sub(s, lo), hi - lo), 0, 1);
    // Powers [B, D + 1]: 1, t, t^2, ...
    const powers: tf.Tensor[] = [tf.onesLike(t)];
    for (let d = 1; d <= constants.degree; d++) powers.push(tf.mul(powers[d - 1], t));
    const T = tf.concat(powers, 1);
    const logWeights = tf.logSoftmax(tf.matMul(T, coeffs.weight));
    const offsets = tf.mul(tf.matMul(T, coeffs.offset), constants.residualScale);
    const meanOffset = tf.sum(tf.mul(tf.exp(logWeights), offsets), 1, true);
    const means = tf.add(s, tf.sub(offsets, meanOffset));
    const variances = tf.add(
      tf.mul(tf.softplus(tf.mul(tf.matMul(T, coeffs.variance), VARIANCE_SHARPNESS)), constants.residualScale ** 2 / VARIANCE_SHARPNESS),
      constants.minVariance,
    );
    const terms = tf.sub(
      tf.sub(logWeights, tf.mul(tf.log(tf.mul(variances, 2 * Math.PI)), 0.5)),
      tf.div(tf.square(tf.sub(x, means)), tf.mul(variances, 2)),
    );
    return tf.reshape(tf.logSumExp(terms, 1), shape);
  });
}

/** Why a parsed JSON object is not a usable GMM noise model, or null when it is. */
export function gmmModelProblem(m: Partial<GmmNoiseModel>): string | null {
  const K = m.components;
  const D = m.degree;
  if (!Number.isInteger(K) || (K as number) < 1 || !Number.isInteger(D) || (D as number) < 0) return `has invalid components=${K} or degree=${D}`;
  const matrixOk = (rows: unknown): boolean =>
    Array.isArray(rows) && rows.length === K && rows.every((row) => Array.isArray(row) && row.length === (D as number) + 1 && row.every((v) => Number.isFinite(v)));
  if (!matrixOk(m.weightCoefficients) || !matrixOk(m.offsetCoefficients) || !matrixOk(m.varianceCoefficients)) return `needs ${K} x ${(D as number) + 1} finite weight, offset and variance coefficients`;
  const range = m.signalRange;
  if (!Array.isArray(range) || range.length !== 2 || !Number.isFinite(range[0]) || !Number.isFinite(range[1]) || !(range[1] > range[0])) return `has an invalid signal range ${JSON.stringify(range)}`;
  if (!((m.residualScale as number) > 0) || !Number.isFinite(m.residualScale)) return `has an invalid residual scale ${m.residualScale}`;
  if (!((m.minVariance as number) > 0) || !Number.isFinite(m.minVariance)) return `has an invalid minimum variance ${m.minVariance}`;
  return null;
}
