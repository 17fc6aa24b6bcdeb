/**
 * The GMM noise model's minibatch loss, mean -log p(x|s), with its gradient in every coefficient,
 * written out by hand, and Adam over the coefficient matrices: the fit of noise/gmmFit.ts in plain
 * TypeScript. Why not tfjs: a GMM on a 4096-pair minibatch is ~40 tiny ops, and tfjs' per-op
 * overhead on the cpu backend made each step ~90 ms (1000 steps: 88 s on the shared 2-core machine);
 * these loops do the same step in about a millisecond. gmmLogLikelihood (noise/gmm.ts) is the tfjs
 * form of the same function, and a test checks the two gradients agree.
 *
 * For one pair, with a_k the weight logits, w = softmax(a), o_k = R P^o_k(t), mbar = sum w_j o_j,
 * mu_k = s + o_k - mbar, var_k = v0 + R^2 softplus(beta u_k) / beta, z_k = x - mu_k,
 * L_k = log w_k - log(2 pi var_k) / 2 - z_k^2 / (2 var_k), ll = logsumexp_k L_k and the
 * responsibilities g_k = exp(L_k - ll), q_k = g_k z_k / var_k, Q = sum_k q_k:
 *   d ll / d a_k = g_k - w_k - Q w_k (o_k - mbar)
 *   d ll / d P^o_k = R (q_k - w_k Q)
 *   d ll / d u_k = g_k (z_k^2 / var_k - 1) / (2 var_k) * R^2 sigmoid(beta u_k)
 * and each coefficient d of a polynomial gets its value's gradient times t^d.
 */
import { VARIANCE_SHARPNESS, type GmmConstants } from './gmm.js';

/** [K][D + 1] coefficient rows (the model file's layout). */
export interface GmmCoefficientRows {
  weight: number[][];
  offset: number[][];
  variance: number[][];
}

/** Mean -log p(x|s) over the pairs; writes its gradients (same layout) into `gradients`. */
export function gmmNegLogLikelihoodGradients(
  constants: GmmConstants,
  coefficients: GmmCoefficientRows,
  signal: ArrayLike<number>,
  observation: ArrayLike<number>,
  gradients: GmmCoefficientRows,
): number {
  const K = constants.components;
  const D = constants.degree;
  const R = constants.residualScale;
  const beta = VARIANCE_SHARPNESS;
  const [lo, hi] = constants.signalRange;
  for (const rows of [gradients.weight, gradients.offset, gradients.variance]) for (const row of rows) row.fill(0);
  const powers = new Float64Array(D + 1);
  const logits = new Float64Array(K);
  const w = new Float64Array(K);
  const o = new Float64Array(K);
  const u = new Float64Array(K);
  const variance = new Float64Array(K);
  const z = new Float64Array(K);
  const L = new Float64Array(K);
  const ga = new Float64Array(K);
  const go = new Float64Array(K);
  const gu = new Float64Array(K);
  const n = signal.length;
  let loss = 0;
  for (let i = 0; i < n; i++) {
    const s = signal[i];
    const x = observation[i];
    let t = (s - lo) / (hi - lo);
    t = t < 0 ? 0 : t > 1 ? 1 : t;
    powers[0] = 1;
    for (let d = 1; d <= D; d++) powers[d] = powers[d - 1] * t;
    let maxLogit = -Infinity;
    for (let k = 0; k < K; k++) {
      let a = 0;
      let m = 0;
      let v = 0;
      for (let d = 0; d <= D; d++) {
        a += coefficients.weight[k][d] * powers[d];
        m += coefficients.offset[k][d] * powers[d];
        v += coefficients.variance[k][d] * powers[d];
      }
      logits[k] = a;
      o[k] = R * m;
      u[k] = v;
      if (a > maxLogit) maxLogit = a;
    }
    let sumExp = 0;
    for (let k = 0; k < K; k++) sumExp += Math.exp(logits[k] - maxLogit);
    const logNorm = maxLogit + Math.log(sumExp);
    let mbar = 0;
    for (let k = 0; k < K; k++) {
      w[k] = Math.exp(logits[k] - logNorm);
      mbar += w[k] * o[k];
    }
    let maxL = -Infinity;
    for (let k = 0; k < K; k++) {
      const bu = beta * u[k];
      variance[k] = constants.minVariance + (R * R * (bu > 30 ? bu : Math.log1p(Math.exp(bu)))) / beta;
      z[k] = x - (s + o[k] - mbar);
      L[k] = logits[k] - logNorm - 0.5 * Math.log(2 * Math.PI * variance[k]) - (z[k] * z[k]) / (2 * variance[k]);
      if (L[k] > maxL) maxL = L[k];
    }
    let sumL = 0;
    for (let k = 0; k < K; k++) sumL += Math.exp(L[k] - maxL);
    const ll = maxL + Math.log(sumL);
    loss -= ll;
    let Q = 0;
    for (let k = 0; k < K; k++) {
      const g = Math.exp(L[k] - ll);
      const q = (g * z[k]) / variance[k];
      Q += q;
      go[k] = q; // completed below, once Q is known
      const bu = beta * u[k];
      gu[k] = ((g * ((z[k] * z[k]) / variance[k] - 1)) / (2 * variance[k])) * R * R * (1 / (1 + Math.exp(-bu)));
      ga[k] = g - w[k];
    }
    for (let k = 0; k < K; k++) {
      ga[k] -= Q * w[k] * (o[k] - mbar);
      go[k] = R * (go[k] - w[k] * Q);
      // The loss is -mean ll: accumulate minus the gradient of ll.
      for (let d = 0; d <= D; d++) {
        gradients.weight[k][d] -= ga[k] * powers[d];
        gradients.offset[k][d] -= go[k] * powers[d];
        gradients.variance[k][d] -= gu[k] * powers[d];
      }
    }
  }
  for (const rows of [gradients.weight, gradients.offset, gradients.variance]) for (const row of rows) for (let d = 0; d <= D; d++) row[d] /= n;
  return loss / n;
}

/** Adam (Kingma & Ba; tf.train.adam's defaults) over a list of coefficient matrices, updated in place. */
export class Adam {
  private readonly m: number[][][];
  private readonly v: number[][][];
  private step_ = 0;
  constructor(
    private readonly params: number[][][],
    private readonly beta1 = 0.9,
    private readonly beta2 = 0.999,
    private readonly epsilon = 1e-7,
  ) {
    this.m = params.map((p) => p.map((row) => row.map(() => 0)));
    this.v = params.map((p) => p.map((row) => row.map(() => 0)));
  }

  step(gradients: number[][][], rate: number): void {
    this.step_++;
    const c1 = 1 - this.beta1 ** this.step_;
    const c2 = 1 - this.beta2 ** this.step_;
    this.params.forEach((p, i) =>
      p.forEach((row, r) => {
        for (let c = 0; c < row.length; c++) {
          const g = gradients[i][r][c];
          const m = (this.m[i][r][c] = this.beta1 * this.m[i][r][c] + (1 - this.beta1) * g);
          const v = (this.v[i][r][c] = this.beta2 * this.v[i][r][c] + (1 - this.beta2) * g * g);
          row[c] -= (rate * (m / c1)) / (Math.sqrt(v / c2) + this.epsilon);
        }
      }),
    );
  }
}
