/**
 * 3D convolution (NDHWC input, [kd, kh, kw, Ci, Co] filter) and its gradients for the wasm
 * backend, composed from XNNPACK 2D convolutions over the depth taps. tfjs-backend-wasm 4.22
 * ships Conv3D / Conv3DBackpropFilterV2 as plain loops (~0.3-0.5 GFLOP/s); these run at the 2D
 * convolution rate.
 *
 * The shipped Conv3DBackpropInputV2 is also wrong (all strides) and Conv3DBackpropFilterV2 wrong
 * for strides > 1 (checked against the cpu backend), so these replace them outright.
 *
 * Forward: depth is folded into the batch ([B*D, H, W, Ci], a free reshape), each depth tap t
 * is one batched 2D convolution with filter[t], and its planes are added, shifted by t in depth,
 * into the output (gather: y[o] += Z_t[o*sd - pad + t]). The shift moves whole [Ho, Wo, Co]
 * planes, so the sum is a few contiguous passes on the wasm heap; the input is never copied.
 *
 * dx: per depth tap the 2D dx of the folded dy with filter[t], scattered back in depth
 * (dx[o*sd - pad + t] += Z_t[o]); strides in depth cost nothing extra.
 *
 * dW: for tap t, dW[t] is the 2D dW of the depth-shifted input against dy, with (depth, batch)
 * as the reduction axis. x is transposed once to [Ci, H, W, Dpad, B]; the tap-t window is the
 * channel range {(o*sd + t)*B + b} (contiguous for sd = 1), and dy, transposed once to
 * [Ho, Wo, Do*B, Co], is the same filter for every tap (XNNPACK packs it once).
 */
import * as tf from '@tensorflow/tfjs-core';
import { conv2dInputGradInScope, filterGradFromTransposed, flippedSwappedFilter2D } from './conv2d-grad.js';
import {
  explicitPadding,
  inputsOf,
  withScope,
  type ExplicitPadding2D,
  type KernelArgs,
  type WasmKernelScope,
} from './wasm-scope.js';

function conv3dInfo(
  xShape: number[],
  filterShape: number[],
  strides: number | [number, number, number],
  pad: 'valid' | 'same',
  dilations: number | [number, number, number] | undefined,
): tf.backend_util.Conv3DInfo {
  return tf.backend_util.computeConv3DInfo(
    xShape as [number, number, number, number, number],
    filterShape as [number, number, number, number, number],
    strides,
    dilations ?? 1,
    pad,
  );
}

function isUnitDilation(info: tf.backend_util.Conv3DInfo): boolean {
  return info.dilationDepth === 1 && info.dilationHeight === 1 && info.dilationWidth === 1;
}

/** acc[b, d] += planes[b, s] for every (s, d) in `pairs`; a plane is [H, W, C], contiguous. */
function addDepthPlanes(
  acc: Float32Array,
  planes: Float32Array,
  batch: number,
  planeSize: number,
  src: { depth: number },
  dst: { depth: number },
  pairs: ReadonlyArray<readonly [srcIndex: number, dstIndex: number]>,
): void {
  for (let b = 0; b < batch; b++) {
    for (const [s, d] of pairs) {
      const from = (b * src.depth + s) * planeSize;
      const to = (b * dst.depth + d) * planeSize;
      for (let i = 0; i < planeSize; i++) acc[to + i] += planes[from + i];
    }
  }
}

/** Depth pairs (source plane of Z_t, output plane) of the forward gather for tap t. */
function forwardPairs(t: number, inDepth: number, outDepth: number, stride: number, padFront: number): [number, number][] {
  const pairs: [number, number][] = [];
  for (let o = 0; o < outDepth; o++) {
    const s = o * stride - padFront + t;
    if (s >= 0 && s < inDepth) pairs.push([s, o]);
  }
  return pairs;
}

/**
 * y[b, o] = sum_t conv2d(x[b, o*strideDepth - padFront + t], filter[t]) (zero outside x).
 * x: [B, Din, H, W, Ci], filter: [kd, kh, kw, Ci, Co]; returns [B, outDepth, Ho, Wo, Co], kept
 * out of `scope`'s disposal.
 */
export function conv3dOverDepthTaps(
  scope: WasmKernelScope,
  x: tf.TensorInfo,
  filter: tf.TensorInfo,
  depth: { padFront: number; stride: number; outDepth: number },
  hwStrides: [number, number],
  hwPad: ExplicitPadding2D,
): tf.TensorInfo {
  const [batch, inDepth, inH, inW, inC] = x.shape;
  const [kd, kh, kw, , outC] = filter.shape;
  const xFolded = scope.reshape(x, [batch * inDepth, inH, inW, inC]);
  let out: tf.TensorInfo | null = null;
  for (let t = 0; t < kd; t++) {
    const pairs = forwardPairs(t, inDepth, depth.outDepth, depth.stride, depth.padFront);
    if (pairs.length === 0) continue;
    const tap = scope.reshape(scope.slice(filter, [t, 0, 0, 0, 0], [1, kh, kw, inC, outC]), [kh, kw, inC, outC]);
    const planes = scope.conv2d(xFolded, tap, hwStrides, hwPad);
    const [, outH, outW] = planes.shape;
    if (out === null) {
      out = scope.output([batch, depth.outDepth, outH, outW, outC]);
      scope.heap(out).fill(0);
    }
    // Views taken after the last allocation: a heap growth would detach older ones.
    addDepthPlanes(scope.heap(out), scope.heap(planes), batch, outH * outW * outC, { depth: inDepth }, { depth: depth.outDepth }, pairs);
    scope.release(planes);
    scope.release(tap);
  }
  if (out === null) throw new Error('conv3d: no depth tap overlaps the input');
  return scope.keep(out);
}

export function conv3DFast(args: KernelArgs): tf.TensorInfo | null {
  const { x, filter } = inputsOf(args.inputs, 'x', 'filter');
  const attrs = args.attrs as unknown as tf.Conv3DAttrs;
  if (attrs.dataFormat === 'NCDHW') return null;
  const info = conv3dInfo(x.shape, filter.shape, attrs.strides, attrs.pad, attrs.dilations);
  if (!isUnitDilation(info)) return null;
  const p = info.padInfo;
  return withScope(args.backend, (scope) =>
    conv3dOverDepthTaps(
      scope,
      x,
      filter,
      { padFront: p.front, stride: info.strideDepth, outDepth: info.outDepth },
      [info.strideHeight, info.strideWidth],
      explicitPadding(p.top, p.bottom, p.left, p.right),
    ),
  );
}

export function conv3DBackpropInputFast(args: KernelArgs): tf.TensorInfo | null {
  const { dy, filter } = inputsOf(args.inputs, 'dy', 'filter');
  const attrs = args.attrs as unknown as tf.Conv3DBackpropInputV2Attrs;
  const info = conv3dInfo(attrs.inputShape, filter.shape, attrs.strides, attrs.pad, 1);
  const [batch, inDepth, inH, inW, inC] = attrs.inputShape;
  const { filterDepth: kd, filterHeight: kh, filterWidth: kw, outDepth, outHeight, outWidth, outChannels } = info;
  return withScope(args.backend, (scope) => {
    const dyFolded = scope.reshape(dy, [batch * outDepth, outHeight, outWidth, outChannels]);
    const out = scope.output([batch, inDepth, inH, inW, inC]);
    scope.heap(out).fill(0);
    for (let t = 0; t < kd; t++) {
      // Output plane o of tap t came from input plane o*sd - pad + t: scatter it back there.
      const pairs = forwardPairs(t, inDepth, outDepth, info.strideDepth, info.padInfo.front).map(
        ([s, o]) => [o, s] as const,
      );
      if (pairs.length === 0) continue;
      const tap = scope.reshape(scope.slice(filter, [t, 0, 0, 0, 0], [1, kh, kw, inC, outChannels]), [kh, kw, inC, outChannels]);
      const flipped = flippedSwappedFilter2D(scope, tap);
      const planes = conv2dInputGradInScope(
        scope,
        dyFolded,
        flipped,
        { inH, inW },
        { sh: info.strideHeight, sw: info.strideWidth },
        info.padInfo,
      );
      if (planes === null) throw new Error(`wasm Conv3DBackpropInputV2: padding ${JSON.stringify(attrs.pad)} unsupported`);
      addDepthPlanes(scope.heap(out), scope.heap(planes), batch, inH * inW * inC, { depth: outDepth }, { depth: inDepth }, pairs);
      scope.release(planes);
    }
    return scope.keep(out);
  });
}

export function conv3DBackpropFilterFast(args: KernelArgs): tf.TensorInfo | null {
  const { x, dy } = inputsOf(args.inputs, 'x', 'dy');
  const attrs = args.attrs as unknown as tf.Conv3DBackpropFilterV2Attrs;
  const info = conv3dInfo(x.shape, attrs.filterShape, attrs.strides, attrs.pad, 1);
  const [batch, inDepth, inH, inW, inC] = x.shape;
  const { filterDepth: kd, filterHeight: kh, filterWidth: kw, outDepth, outHeight, outWidth, outChannels } = info;
  const sd = info.strideDepth;
  const padFront = info.padInfo.front;
  // Depth planes of the padded input that the taps read: up to (Do-1)*sd + kd from -padFront.
  const padBack = Math.max(0, (outDepth - 1) * sd + kd - inDepth - padFront);
  return withScope(args.backend, (scope) => {
    // Pad depth at rank 4 ([B, D, H*W, Ci]); rank-5 PadV2 is ~6x slower on wasm.
    let xPadded = scope.reshape(x, [batch, inDepth, inH * inW, inC]);
    if (padFront > 0 || padBack > 0) {
      xPadded = scope.run('PadV2', { x: xPadded }, {
        paddings: [[0, 0], [padFront, padBack], [0, 0], [0, 0]],
        constantValue: 0,
      } as unknown as tf.NamedAttrMap);
    }
    const paddedDepth = inDepth + padFront + padBack;
    const xT = scope.reshape(scope.transpose(xPadded, [3, 2, 1, 0]), [inC, inH, inW, paddedDepth, batch]);
    const xImages = scope.reshape(xT, [inC, inH, inW, paddedDepth * batch]);
    const dyT = scope.transpose(dy, [2, 3, 1, 0, 4]); // [Ho, Wo, Do, B, Co]
    const dyFilter = scope.reshape(dyT, [outHeight, outWidth, outDepth * batch, outChannels]);
    const perTap: tf.TensorInfo[] = [];
    for (let t = 0; t < kd; t++) {
      const strided =
        sd === 1
          ? null
          : scope.run('StridedSlice', { x: xT }, {
                begin: [0, 0, 0, t, 0],
                end: [inC, inH, inW, t + (outDepth - 1) * sd + 1, batch],
                strides: [1, 1, 1, sd, 1],
                beginMask: 0,
                endMask: 0,
                ellipsisMask: 0,
                newAxisMask: 0,
              shrinkAxisMask: 0,
            } as unknown as tf.NamedAttrMap);
      const window =
        strided === null
          ? scope.slice(xImages, [0, 0, 0, t * batch], [inC, inH, inW, outDepth * batch])
          : scope.reshape(strided, [inC, inH, inW, outDepth * batch]);
      const grad = filterGradFromTransposed(
        scope,
        window,
        dyFilter,
        { kh, kw },
        { sh: info.strideHeight, sw: info.strideWidth },
        { top: info.padInfo.top, left: info.padInfo.left },
      );
      scope.release(window);
      if (strided !== null) scope.release(strided);
      perTap.push(scope.reshape(grad, [1, inC, kh, kw, outChannels]));
    }
    const stacked = kd === 1 ? perTap[0] : scope.run('Concat', perTap, { axis: 0 });
    return scope.keep(scope.transpose(stacked, [0, 2, 3, 1, 4])); // [kd, kh, kw, Ci, Co]
  });
}
