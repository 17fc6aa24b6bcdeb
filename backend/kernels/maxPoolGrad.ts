/**
 * MaxPoolGrad (2D, NHWC) on wasm as one pass over the heap. The shipped kernel loops, for every
 * input pixel, over every window that could contain it and re-derives each window's argmax
 * (~45 ms per call for the U-Net's 16x64x64x32 pooling with 2 threads, under load); here each
 * window's argmax is found once, channels innermost (contiguous in NHWC), and dy is added to dx
 * at that position.
 *
 * Semantics are the cpu backend's (tfjs-backend-cpu maxPoolPositions): the gradient goes to the
 * first maximum of the window in row-major window order (strictly greater wins), padding never
 * wins, and a window without any value > -Infinity (all NaN or -Infinity) passes no gradient.
 * With overlapping windows, contributions are summed in float32 (the cpu backend sums in double):
 * equal up to rounding.
 */
import * as tf from '@tensorflow/tfjs-core';
import { inputsOf, withScope, type KernelArgs } from './wasm-scope.js';

/** The loop on plain arrays: `dx` must be zero-filled; shapes are those of `info`. */
export function maxPoolGradInto(x: Float32Array, dy: Float32Array, dx: Float32Array, info: tf.backend_util.Conv2DInfo): void {
  const { batchSize, inHeight, inWidth, inChannels: channels, outHeight, outWidth, strideHeight, strideWidth } = info;
  const { effectiveFilterHeight: fh, effectiveFilterWidth: fw } = info;
  const { top, left } = info.padInfo;
  const maxValue = new Float32Array(channels);
  const maxIndex = new Int32Array(channels);
  for (let b = 0; b < batchSize; b++) {
    const xBatch = b * inHeight * inWidth * channels;
    for (let yR = 0; yR < outHeight; yR++) {
      const rowStart = yR * strideHeight - top;
      const rMin = Math.max(rowStart, 0);
      const rMax = Math.min(rowStart + fh, inHeight);
      for (let yC = 0; yC < outWidth; yC++) {
        const colStart = yC * strideWidth - left;
        const cMin = Math.max(colStart, 0);
        const cMax = Math.min(colStart + fw, inWidth);
        maxValue.fill(-Infinity);
        maxIndex.fill(-1);
        for (let r = rMin; r < rMax; r++) {
          for (let c = cMin; c < cMax; c++) {
            const base = xBatch + (r * inWidth + c) * channels;
            for (let d = 0; d < channels; d++) {
              const value = x[base + d];
              if (value > maxValue[d]) {
                maxValue[d] = value;
                maxIndex[d] = base + d;
              }
            }
          }
        }
        const dyBase = ((b * outHeight + yR) * outWidth + yC) * channels;
        for (let d = 0; d < channels; d++) {
          const at = maxIndex[d];
          if (at >= 0) dx[at] += dy[dyBase + d];
        }
      }
    }
  }
}

/** The fast path; null (the shipped kernel) for dilations other than 1. */
export function maxPoolGradFast(args: KernelArgs): tf.TensorInfo | null {
  const { dy, input } = inputsOf(args.inputs, 'dy', 'input');
  const attrs = args.attrs as unknown as tf.MaxPoolGradAttrs;
  if (input.dtype !== 'float32' || dy.dtype !== 'float32') return null;
  const info = tf.backend_util.computePool2DInfo(input.shape as [number, number, number, number], attrs.filterSize, attrs.strides, 1, attrs.pad, attrs.dimRoundingMode);
  if (info.dilationHeight !== 1 || info.dilationWidth !== 1) return null;
  return withScope(args.backend, (scope) => {
    // Allocate before taking heap views: an allocation may grow (and move) the heap.
    const dx = scope.keep(scope.output(input.shape));
    const dxValues = scope.heap(dx);
    dxValues.fill(0);
    maxPoolGradInto(scope.heap(input), scope.heap(dy), dxValues, info);
    return dx;
  });
}
