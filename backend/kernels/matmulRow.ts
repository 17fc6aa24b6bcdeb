/**
 * BatchMatMul on wasm for one row: [1, 1, K] x [1, K, N] (untransposed). The batch-norm layers
 * (models/layers.ts channelSums) reduce [rows, C] activations to per-channel sums this way, 40
 * times per training step of the reference U-Net, each time with a new right-hand operand. The
 * shipped kernel hands that operand to XNNPACK as the weights of a fully-connected operator, which
 * packs (copies and reorders) all K x N values before a product that reads each of them once:
 * measured 40 ms for a fresh 65536 x 32 operand with 2 threads (machine under load), against
 * 2-4 ms for this loop, which streams the operand once and accumulates in double.
 */
import type * as tf from '@tensorflow/tfjs-core';
import { inputsOf, withScope, type KernelArgs } from './wasm-scope.js';

/**
 * out[j] = sum_k row[k] * matrix[k * n + j], accumulated in double; `out` has length n. Four rows
 * per pass over the accumulators: half the time of one (fewer accumulator loads and stores).
 */
export function rowTimesMatrixInto(row: Float32Array, matrix: Float32Array, n: number, out: Float32Array): void {
  const k = row.length;
  const acc = new Float64Array(n);
  let r = 0;
  for (; r + 4 <= k; r += 4) {
    const b0 = r * n;
    const b1 = b0 + n;
    const b2 = b1 + n;
    const b3 = b2 + n;
    const s0 = row[r];
    const s1 = row[r + 1];
    const s2 = row[r + 2];
    const s3 = row[r + 3];
    for (let j = 0; j < n; j++) acc[j] += s0 * matrix[b0 + j] + s1 * matrix[b1 + j] + s2 * matrix[b2 + j] + s3 * matrix[b3 + j];
  }
  for (; r < k; r++) {
    const base = r * n;
    const s = row[r];
    for (let j = 0; j < n; j++) acc[j] += s * matrix[base + j];
  }
  out.set(acc);
}

/**
 * The fast path; null (the shipped kernel) unless a is one untransposed row ([..., 1, K]) and
 * neither operand has a batch (every leading dimension 1). The output has the shipped kernel's
 * shape: the broadcast leading dimensions, then [1, N].
 */
export function batchMatMulRowFast(args: KernelArgs): tf.TensorInfo | null {
  const { a, b } = inputsOf(args.inputs, 'a', 'b');
  const attrs = args.attrs as unknown as tf.BatchMatMulAttrs;
  if (attrs.transposeA || attrs.transposeB) return null;
  if (a.dtype !== 'float32' || b.dtype !== 'float32' || a.shape.length < 2 || b.shape.length < 2) return null;
  const leadingA = a.shape.slice(0, -2);
  const leadingB = b.shape.slice(0, -2);
  if (!leadingA.every((d) => d === 1) || !leadingB.every((d) => d === 1)) return null;
  const [rows, inner] = a.shape.slice(-2);
  const [innerB, n] = b.shape.slice(-2);
  if (rows !== 1 || inner !== innerB) return null;
  const leading = (leadingA.length >= leadingB.length ? leadingA : leadingB).map(() => 1);
  return withScope(args.backend, (scope) => {
    // Allocate before taking heap views: an allocation may grow (and move) the heap.
    const out = scope.keep(scope.output([...leading, 1, n]));
    rowTimesMatrixInto(scope.heap(a), scope.heap(b), n, scope.heap(out));
    return out;
  });
}
