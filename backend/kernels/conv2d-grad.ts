/**
 * Fast 2D convolution gradients for the wasm backend, both expressed as one forward XNNPACK
 * convolution (see shared/docs/tfjs-wasm-notes.md for the measurements behind the choice).
 *
 * dW: dW[i,j,ci,co] = sum_{b,y,x} xpad[b, y*s+i, x*s+j, ci] * dy[b,y,x,co]. Seen as a
 * convolution of the "images" xT = x^T [Ci, H, W, B] (B channels) with the "filter"
 * dyT = [Ho, Wo, B, Co], dilated by the forward stride, it yields [Ci, kh, kw, Co].
 *
 * dx (stride 1): a forward convolution of dy with the spatially reversed filter whose in/out
 * channels are swapped, padded by k-1-pad.
 */
import * as tf from '@tensorflow/tfjs-core';
import { explicitPadding, inputsOf, withScope, type KernelArgs, type WasmKernelScope } from './wasm-scope.js';

type Pad = tf.Conv2DAttrs['pad'];

function conv2dInfo(
  xShape: number[],
  filterShape: number[],
  strides: number | [number, number],
  pad: Pad,
  dimRoundingMode: tf.Conv2DAttrs['dimRoundingMode'],
): tf.backend_util.Conv2DInfo {
  return tf.backend_util.computeConv2DInfo(
    xShape as [number, number, number, number],
    filterShape as [number, number, number, number],
    strides,
    1,
    pad,
    dimRoundingMode,
    false,
    'channelsLast',
  );
}

/**
 * dW of a stride-(sh, sw), dilation-1 NHWC convolution, written into `scope` (not kept).
 * `xT` is x transposed to [Ci, H, W, C'] and `dyFilter` is dy as [Ho, Wo, C', Co]; C' is the
 * reduction axis (the batch for 2D; depth x batch for the 3D composition).
 * Returns [Ci, kh, kw, Co].
 */
export function filterGradFromTransposed(
  scope: WasmKernelScope,
  xT: tf.TensorInfo,
  dyFilter: tf.TensorInfo,
  kernel: { kh: number; kw: number },
  strides: { sh: number; sw: number },
  padding: { top: number; left: number },
): tf.TensorInfo {
  const [ci, inH, inW] = xT.shape;
  const [outH, outW, , co] = dyFilter.shape;
  // Bottom/right padding so that exactly kh x kw outputs come out; rows past the last used one
  // (valid padding with a remainder) would make it negative: pad 0 and crop instead.
  const bottom = (outH - 1) * strides.sh + kernel.kh - inH - padding.top;
  const right = (outW - 1) * strides.sw + kernel.kw - inW - padding.left;
  const raw = scope.conv2d(
    xT,
    dyFilter,
    [1, 1],
    explicitPadding(padding.top, Math.max(bottom, 0), padding.left, Math.max(right, 0)),
    [strides.sh, strides.sw],
  );
  if (bottom >= 0 && right >= 0) return raw;
  return scope.slice(raw, [0, 0, 0, 0], [ci, kernel.kh, kernel.kw, co]);
}

/**
 * x [B, H, W, C] as [C, H, W, B], by a JS loop over the wasm heap: 16 pixels at a time, so each
 * channel's output is one contiguous run of 16 B values and the reads stay within 16 B input rows,
 * four channels per pass (each input read serves four outputs: 1.5-1.9x less CPU than one). The
 * shipped Transpose walks the output with a stride of H W B floats per channel; bench/kernels.ts
 * times both.
 */
export function batchToLast(scope: WasmKernelScope, x: tf.TensorInfo): tf.TensorInfo {
  const [batch, height, width, channels] = x.shape;
  const pixels = height * width;
  const out = scope.output([channels, height, width, batch]);
  // Views after the allocation: it may grow (and move) the heap.
  const src = scope.heap(x);
  const dst = scope.heap(out);
  const tile = 16;
  const batchStride = pixels * channels;
  const channelStride = pixels * batch;
  for (let p0 = 0; p0 < pixels; p0 += tile) {
    const p1 = Math.min(pixels, p0 + tile);
    let c = 0;
    for (; c + 4 <= channels; c += 4) {
      let to = (c * pixels + p0) * batch;
      for (let p = p0; p < p1; p++) {
        let from = p * channels + c;
        for (let b = 0; b < batch; b++, from += batchStride, to++) {
          dst[to] = src[from];
          dst[to + channelStride] = src[from + 1];
          dst[to + 2 * channelStride] = src[from + 2];
          dst[to + 3 * channelStride] = src[from + 3];
        }
      }
    }
    for (; c < channels; c++) {
      let to = (c * pixels + p0) * batch;
      for (let p = p0; p < p1; p++) {
        let from = p * channels + c;
        for (let b = 0; b < batch; b++, from += batchStride) dst[to++] = src[from];
      }
    }
  }
  return out;
}

/** x transposed for dW by batchToLast (true) or the shipped Transpose (false); see bench/kernels.ts. */
let transposeInJs = true;
export function setFilterGradTransposeInJs(enabled: boolean): void {
  transposeInJs = enabled;
}

export function conv2DBackpropFilterWasm(args: KernelArgs): tf.TensorInfo {
  const { x, dy } = inputsOf(args.inputs, 'x', 'dy');
  const attrs = args.attrs as unknown as tf.Conv2DBackpropFilterAttrs;
  if (attrs.dataFormat === 'NCHW') throw new Error('wasm Conv2DBackpropFilter supports only NHWC');
  const info = conv2dInfo(x.shape, attrs.filterShape, attrs.strides, attrs.pad, attrs.dimRoundingMode);
  return withScope(args.backend, (scope) => {
    const xT = transposeInJs && x.dtype === 'float32' ? batchToLast(scope, x) : scope.transpose(x, [3, 1, 2, 0]);
    const dyFilter = scope.transpose(dy, [1, 2, 0, 3]);
    const gradT = filterGradFromTransposed(
      scope,
      xT,
      dyFilter,
      { kh: info.filterHeight, kw: info.filterWidth },
      { sh: info.strideHeight, sw: info.strideWidth },
      { top: info.padInfo.top, left: info.padInfo.left },
    );
    return scope.keep(scope.transpose(gradT, [1, 2, 0, 3]));
  });
}

/**
 * Filter [kh, kw, Ci, Co] reversed in space and with in/out channels swapped: [kh, kw, Co, Ci],
 * the filter of the transposed convolution.
 */
export function flippedSwappedFilter2D(scope: WasmKernelScope, filter: tf.TensorInfo): tf.TensorInfo {
  const reversed = scope.run('Reverse', { x: filter }, { dims: [0, 1] });
  return scope.transpose(reversed, [0, 1, 3, 2]);
}

/** Padding of the dx convolution; null when some side would be negative (explicit pad > k-1). */
export function transposedPadding(
  kh: number,
  kw: number,
  pad: { top: number; left: number },
  dyExtent: { dilatedH: number; dilatedW: number },
  inputExtent: { inH: number; inW: number },
): { top: number; bottom: number; left: number; right: number } | null {
  const top = kh - 1 - pad.top;
  const left = kw - 1 - pad.left;
  // Whatever makes the stride-1 convolution of the (dilated) dy come out exactly inH x inW.
  const bottom = inputExtent.inH + kh - 1 - dyExtent.dilatedH - top;
  const right = inputExtent.inW + kw - 1 - dyExtent.dilatedW - left;
  return top < 0 || bottom < 0 || left < 0 || right < 0 ? null : { top, bottom, left, right };
}

/**
 * dy [N, Ho, Wo, C] with (sh-1, sw-1) zeros inserted between pixels: the transposed
 * convolution of a strided forward pass becomes a stride-1 convolution of this.
 */
function zeroInserted(scope: WasmKernelScope, dy: tf.TensorInfo, sh: number, sw: number): tf.TensorInfo {
  const [n, outH, outW, c] = dy.shape;
  const dilatedH = (outH - 1) * sh + 1;
  const dilatedW = (outW - 1) * sw + 1;
  const out = scope.output([n, dilatedH, dilatedW, c]);
  const dst = scope.heap(out);
  const src = scope.heap(dy);
  dst.fill(0);
  for (let b = 0; b < n; b++) {
    for (let y = 0; y < outH; y++) {
      for (let x = 0; x < outW; x++) {
        const from = ((b * outH + y) * outW + x) * c;
        const to = ((b * dilatedH + y * sh) * dilatedW + x * sw) * c;
        for (let k = 0; k < c; k++) dst[to + k] = src[from + k];
      }
    }
  }
  return out;
}

/**
 * dx [N, H, W, Ci] of an NHWC convolution (dilation 1) from dy [N, Ho, Wo, Co] and the filter
 * already flipped and swapped ([kh, kw, Co, Ci], see flippedSwappedFilter2D). Strides > 1 go
 * through a zero-inserted dy. Null when the padding has no stride-1 equivalent.
 * The result stays in `scope`.
 */
export function conv2dInputGradInScope(
  scope: WasmKernelScope,
  dy: tf.TensorInfo,
  flippedFilter: tf.TensorInfo,
  input: { inH: number; inW: number },
  strides: { sh: number; sw: number },
  pad: { top: number; left: number },
): tf.TensorInfo | null {
  const [kh, kw] = flippedFilter.shape;
  const [, outH, outW] = dy.shape;
  const dilated = { dilatedH: (outH - 1) * strides.sh + 1, dilatedW: (outW - 1) * strides.sw + 1 };
  const p = transposedPadding(kh, kw, pad, dilated, input);
  if (p === null) return null;
  const source = strides.sh === 1 && strides.sw === 1 ? dy : zeroInserted(scope, dy, strides.sh, strides.sw);
  return scope.conv2d(source, flippedFilter, [1, 1], explicitPadding(p.top, p.bottom, p.left, p.right));
}

/** The fast dx, or null when this case is left to the shipped kernel. */
export function conv2DBackpropInputFast(args: KernelArgs): tf.TensorInfo | null {
  const { dy, filter } = inputsOf(args.inputs, 'dy', 'filter');
  const attrs = args.attrs as unknown as tf.Conv2DBackpropInputAttrs;
  if (attrs.dataFormat === 'NCHW') return null;
  const info = conv2dInfo(attrs.inputShape, filter.shape, attrs.strides, attrs.pad, attrs.dimRoundingMode);
  if (!useZeroInsertion && (info.strideHeight !== 1 || info.strideWidth !== 1)) return null;
  return withScope(args.backend, (scope) => {
    const flipped = flippedSwappedFilter2D(scope, filter);
    const dx = conv2dInputGradInScope(
      scope,
      dy,
      flipped,
      { inH: info.inHeight, inW: info.inWidth },
      { sh: info.strideHeight, sw: info.strideWidth },
      info.padInfo,
    );
    return dx === null ? null : scope.keep(dx);
  });
}

/** Strided dx through zero insertion (true) or the shipped per-element loop (false); see bench/kernels.ts. */
let useZeroInsertion = true;
export function setStridedInputGradViaZeroInsertion(enabled: boolean): void {
  useZeroInsertion = enabled;
}
