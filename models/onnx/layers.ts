/**
 * One ONNX converter per tfjs layer class our networks use (models/unet.ts, laine19.ts, dbsn.ts and
 * the custom layers of models/layers.ts and blindspotLayers.ts). Each takes the layer's input tensor
 * names (channels-first inside the graph) and returns its output's name. Inference semantics only:
 * batch norm uses its moving statistics and is folded into the convolution before it where that
 * convolution feeds nothing else.
 *
 * Ops used: Conv (pads, dilations, group), Relu, LeakyRelu, MaxPool, Resize (nearest, asymmetric,
 * floor), Concat, Add, Mul, Slice (also with step -1: flips), Pad, Transpose.
 */
import type * as tf from '@tensorflow/tfjs-core';
import type * as tfl from '@tensorflow/tfjs-layers';
import { attr, type GraphBuilder } from './graph.js';

/** A layer the exporter has no converter for, or a configuration it cannot express. */
export class UnsupportedLayerError extends Error {
  constructor(layer: string, problem: string) {
    super(`cannot export layer ${layer} to ONNX: ${problem}`);
    this.name = 'UnsupportedLayerError';
  }
}

/** A convolution whose weights a following batch norm may still rewrite (they are initialisers held by reference). */
interface FoldableConv {
  weight: Float32Array;
  bias: Float32Array;
  outChannels: number;
}

export interface ConvertContext {
  g: GraphBuilder;
  dims: 2 | 3;
  /** Outputs of linear convolutions that nothing but the next layer reads, by tensor name. */
  foldable: Map<string, FoldableConv>;
  /** Initialisers of convolutions called more than once (laine19's shared branch): written once, read by every call. */
  sharedWeights: Map<tfl.layers.Layer, { w: string; b: string }>;
}

/** What a converter knows about one call of a layer. */
export interface LayerCall {
  layer: tfl.layers.Layer;
  inputs: string[];
  /** Channels of each input (the last axis of the tfjs shape). */
  inputChannels: number[];
  /** Whether this call is the only reader of its (single) input: batch norm may fold into the conv before it. */
  soleReader: boolean;
}

type Converter = (ctx: ConvertContext, call: LayerCall) => string;

type Config = Record<string, unknown>;

function config(layer: tfl.layers.Layer): Config {
  return layer.getConfig() as Config;
}

function weightsOf(layer: tfl.layers.Layer): { shape: number[]; data: Float32Array }[] {
  return layer.getWeights().map((w: tf.Tensor) => ({ shape: w.shape.slice(), data: w.dataSync() as Float32Array }));
}

function asArray(v: unknown, dims: number): number[] {
  return Array.isArray(v) ? (v as number[]) : new Array<number>(dims).fill(v as number);
}

/** tfjs kernel [k_1..k_d, Cin, Cout] (C order) to ONNX's [Cout, Cin, k_1..k_d]. */
function kernelToOnnx(shape: number[], data: Float32Array): { dims: number[]; data: Float32Array } {
  const spatial = shape.slice(0, -2);
  const [cin, cout] = shape.slice(-2);
  const taps = spatial.reduce((a, b) => a * b, 1);
  const out = new Float32Array(data.length);
  for (let t = 0; t < taps; t++) for (let i = 0; i < cin; i++) for (let o = 0; o < cout; o++) out[(o * cin + i) * taps + t] = data[(t * cin + i) * cout + o];
  return { dims: [cout, cin, ...spatial], data: out };
}

/** A final activation as named in a tfjs config (a conv's `activation`, or an Activation layer). */
function activation(ctx: ConvertContext, x: string, name: string, which: unknown, where: string): string {
  switch (which) {
    case undefined:
    case null:
    case 'linear':
      return x;
    case 'relu':
      return ctx.g.op('Relu', [x], name);
    default:
      throw new UnsupportedLayerError(where, `activation '${String(which)}' has no converter`);
  }
}

/**
 * A convolution with stride 1 and 'same' (or 'valid') padding: weights transposed to ONNX's layout,
 * a bias always present (zeros if the layer has none, so a batch norm can fold into it), optional
 * centre mask (D-BSN's masked convolution: the kernel's centre tap zeroed, as the layer does before use).
 */
function emitConv(
  ctx: ConvertContext,
  call: LayerCall,
  opts: { kernelSize: number[]; dilation: number[]; padding: string; strides: number[]; activation: unknown; maskCentre?: boolean },
): string {
  const name = call.layer.name;
  // A layer called more than once shares its initialisers between the calls, and never takes a
  // batch norm in (folding would rewrite the weights every other call reads too).
  const shared = (call.layer as unknown as { inboundNodes: unknown[] }).inboundNodes.length > 1;
  const known = shared ? ctx.sharedWeights.get(call.layer) : undefined;
  let w: string;
  let b: string;
  let foldable: FoldableConv | null = null;
  if (known) {
    ({ w, b } = known);
  } else {
    const [kernel, bias] = weightsOf(call.layer);
    const onnxKernel = kernelToOnnx(kernel.shape, kernel.data);
    const [cout, cin] = onnxKernel.dims;
    if (opts.strides.some((s) => s !== 1)) throw new UnsupportedLayerError(name, `strides [${opts.strides.join(', ')}] (only 1 is used by our networks)`);
    if (opts.kernelSize.some((k) => k % 2 === 0) && opts.padding === 'same') throw new UnsupportedLayerError(name, 'an even kernel with same padding');
    if (opts.maskCentre) {
      const taps = onnxKernel.data.length / (cout * cin);
      for (let p = 0; p < cout * cin; p++) onnxKernel.data[p * taps + (taps - 1) / 2] = 0;
    }
    const biasData = bias ? Float32Array.from(bias.data) : new Float32Array(cout);
    w = ctx.g.floats(`${name}/kernel`, onnxKernel.dims, onnxKernel.data);
    b = ctx.g.floats(`${name}/bias`, [cout], biasData);
    if (shared) ctx.sharedWeights.set(call.layer, { w, b });
    else foldable = { weight: onnxKernel.data, bias: biasData, outChannels: cout };
  }
  const halo = opts.kernelSize.map((k, i) => (opts.padding === 'same' ? (opts.dilation[i] * (k - 1)) / 2 : 0));
  const y = ctx.g.op('Conv', [call.inputs[0], w, b], name, {
    kernel_shape: attr.ints(opts.kernelSize),
    dilations: attr.ints(opts.dilation),
    pads: attr.ints([...halo, ...halo]),
    strides: attr.ints(opts.kernelSize.map(() => 1)),
  });
  if (opts.activation === 'linear' || opts.activation === undefined) {
    if (foldable) ctx.foldable.set(y, foldable);
    return y;
  }
  return activation(ctx, y, `${name}_act`, opts.activation, name);
}

const kerasConv: Converter = (ctx, call) => {
  const c = config(call.layer);
  if (c['dataFormat'] !== undefined && c['dataFormat'] !== 'channelsLast') throw new UnsupportedLayerError(call.layer.name, `data format ${String(c['dataFormat'])}`);
  return emitConv(ctx, call, {
    kernelSize: asArray(c['kernelSize'], ctx.dims),
    dilation: asArray(c['dilationRate'] ?? 1, ctx.dims),
    strides: asArray(c['strides'] ?? 1, ctx.dims),
    padding: String(c['padding']),
    activation: c['activation'],
  });
};

function seededConv(maskCentre: boolean): Converter {
  return (ctx, call) => {
    const c = config(call.layer);
    const k = c['kernelSize'] as number;
    const d = (c['dilation'] as number | undefined) ?? 1;
    return emitConv(ctx, call, {
      kernelSize: asArray(k, ctx.dims),
      dilation: asArray(d, ctx.dims),
      strides: asArray(1, ctx.dims),
      padding: 'same',
      activation: 'linear',
      maskCentre,
    });
  };
}

/**
 * Inference batch norm y = (x - mean) * gamma / sqrt(var + eps) + beta, folded into the preceding
 * linear convolution when it feeds nothing else (w' = w * s per output channel, b' = (b - mean) * s
 * + beta, computed in float64), else a Mul and an Add.
 */
function batchNorm(order: (w: ReturnType<typeof weightsOf>, c: Config) => { gamma?: Float32Array; beta?: Float32Array; mean: Float32Array; variance: Float32Array }): Converter {
  return (ctx, call) => {
    const c = config(call.layer);
    const axis = c['axis'];
    if (axis !== undefined && axis !== -1 && !(Array.isArray(axis) ? axis : [axis]).includes(ctx.dims + 1)) {
      throw new UnsupportedLayerError(call.layer.name, `batch norm over axis ${String(axis)} (only the channel axis)`);
    }
    const epsilon = (c['epsilon'] as number | undefined) ?? 1e-3;
    const { gamma, beta, mean, variance } = order(weightsOf(call.layer), c);
    const channels = mean.length;
    const scale = new Float64Array(channels);
    const shift = new Float64Array(channels);
    for (let ch = 0; ch < channels; ch++) {
      // tfjs computes rsqrt(var + eps) in float32; so does this, before widening.
      const rstd = Math.fround(1 / Math.sqrt(Math.fround(variance[ch] + epsilon)));
      scale[ch] = (gamma ? gamma[ch] : 1) * rstd;
      shift[ch] = (beta ? beta[ch] : 0) - mean[ch] * scale[ch];
    }
    const x = call.inputs[0];
    const conv = ctx.foldable.get(x);
    if (conv && call.soleReader && conv.outChannels === channels) {
      const perChannel = conv.weight.length / channels;
      for (let ch = 0; ch < channels; ch++) {
        for (let i = ch * perChannel; i < (ch + 1) * perChannel; i++) conv.weight[i] = conv.weight[i] * scale[ch];
        conv.bias[ch] = conv.bias[ch] * scale[ch] + shift[ch];
      }
      ctx.foldable.delete(x);
      return x;
    }
    const broadcast = [channels, ...new Array<number>(ctx.dims).fill(1)];
    const s = ctx.g.floats(`${call.layer.name}/scale`, broadcast, Float32Array.from(scale));
    const t = ctx.g.floats(`${call.layer.name}/shift`, broadcast, Float32Array.from(shift));
    return ctx.g.op('Add', [ctx.g.op('Mul', [x, s], `${call.layer.name}_scale`), t], call.layer.name);
  };
}

const channelBatchNorm = batchNorm((w) => ({ gamma: w[0].data, beta: w[1].data, mean: w[2].data, variance: w[3].data }));

/** tfjs-layers' BatchNormalization: gamma only with `scale`, beta only with `center`. */
const kerasBatchNorm = batchNorm((w, c) => {
  const list = w.map((x) => x.data);
  const gamma = c['scale'] !== false ? list.shift() : undefined;
  const beta = c['center'] !== false ? list.shift() : undefined;
  const [mean, variance] = list;
  return { gamma, beta, mean, variance };
});

const activationLayer: Converter = (ctx, call) => activation(ctx, call.inputs[0], call.layer.name, config(call.layer)['activation'], call.layer.name);

const leakyRelu: Converter = (ctx, call) => ctx.g.op('LeakyRelu', [call.inputs[0]], call.layer.name, { alpha: attr.float((config(call.layer)['alpha'] as number | undefined) ?? 0.3) });

const maxPool: Converter = (ctx, call) => {
  const c = config(call.layer);
  const size = asArray(c['poolSize'] ?? 2, ctx.dims);
  const strides = asArray(c['strides'] ?? size, ctx.dims);
  if (c['padding'] !== 'valid') throw new UnsupportedLayerError(call.layer.name, `max pooling with ${String(c['padding'])} padding`);
  return ctx.g.op('MaxPool', [call.inputs[0]], call.layer.name, { kernel_shape: attr.ints(size), strides: attr.ints(strides) });
};

/**
 * N2V2's max-blur-pool (models/layers.ts): a 2^dims max pool with stride 1 whose window at the last
 * element holds only itself (MaxPool ignores its end padding), then the binomial blur, stride 2
 * (GraphBuilder.blurDown).
 */
function maxBlurPool(alignment: 'trailing' | 'centred'): Converter {
  return (ctx, call) => {
    const { g, dims } = ctx;
    const name = call.layer.name;
    const maxed = g.op('MaxPool', [call.inputs[0]], `${name}_max`, {
      kernel_shape: attr.ints(new Array<number>(dims).fill(2)),
      strides: attr.ints(new Array<number>(dims).fill(1)),
      pads: attr.ints([...new Array<number>(dims).fill(0), ...new Array<number>(dims).fill(1)]),
    });
    const blur = g.blurDown(call.inputChannels[0], dims, alignment, name);
    return g.op('Conv', [maxed, blur.weight], name, blur.attributes);
  };
}

/** Nearest upsampling by 2 on every spatial axis. */
const upsample: Converter = (ctx, call) => ctx.g.upsampleNearest(call.inputs[0], ctx.dims, call.layer.name);

const kerasUpSampling2d: Converter = (ctx, call) => {
  const c = config(call.layer);
  const size = asArray(c['size'] ?? 2, 2);
  if (size.some((s) => s !== 2) || (c['interpolation'] ?? 'nearest') !== 'nearest') throw new UnsupportedLayerError(call.layer.name, 'upsampling other than nearest by 2');
  return upsample(ctx, call);
};

const concatenate: Converter = (ctx, call) => {
  const axis = (config(call.layer)['axis'] as number | undefined) ?? -1;
  if (axis !== -1 && axis !== ctx.dims + 1) throw new UnsupportedLayerError(call.layer.name, `concatenation along axis ${axis} (only channels)`);
  return ctx.g.op('Concat', call.inputs, call.layer.name, { axis: attr.int(1) });
};

const add: Converter = (ctx, call) => {
  let sum = call.inputs[0];
  for (let i = 1; i < call.inputs.length; i++) sum = ctx.g.op('Add', [sum, call.inputs[i]], call.layer.name);
  return sum;
};

/** The first spatial axis (H in 2D, D in 3D) in channels-first layout. */
export const ROWS = 2;

const padTop: Converter = (ctx, call) => {
  const rank = ctx.dims + 2;
  const before = new Array<number>(rank).fill(0);
  before[ROWS] = config(call.layer)['rows'] as number;
  return ctx.g.pad(call.inputs[0], before, new Array<number>(rank).fill(0), call.layer.name);
};

const cropBottom: Converter = (ctx, call) => ctx.g.slice(call.inputs[0], ROWS, 0, -(config(call.layer)['rows'] as number), call.layer.name);

const shiftDown: Converter = (ctx, call) => ctx.g.shift(call.inputs[0], ROWS, ctx.dims + 2, config(call.layer)['shift'] as number, call.layer.name);

/** Orient (blindspotLayers.ts): transpose the spatial axes, then flip some (inverse: flip, then the inverse transpose). */
const orientLayer: Converter = (ctx, call) => {
  const c = config(call.layer);
  return orientAxes(ctx.g, call.inputs[0], { permutation: c['permutation'] as number[], flips: c['flips'] as number[] }, c['inverse'] === true, call.layer.name);
};

/**
 * Orient's rotation of channels-first `x` (spatial axes from 2), or its inverse: each is the other's
 * adjoint, so the training graph's backward pass applies the opposite one to the gradient.
 */
export function orientAxes(g: GraphBuilder, x: string, orientation: { permutation: readonly number[]; flips: readonly number[] }, inverse: boolean, name: string): string {
  const { permutation } = orientation;
  const flips = orientation.flips.map((a) => a + 2);
  const full = (p: readonly number[]): number[] => [0, 1, ...p.map((a) => a + 2)];
  const identity = permutation.every((v, i) => v === i);
  if (!inverse) {
    const permuted = identity ? x : g.op('Transpose', [x], `${name}_transpose`, { perm: attr.ints(full(permutation)) });
    return flips.length > 0 ? g.flip(permuted, flips, name) : g.op('Identity', [permuted], name);
  }
  const unflipped = g.flip(x, flips, `${name}_flip`);
  if (identity) return unflipped === x ? g.op('Identity', [unflipped], name) : unflipped;
  const inverted = new Array<number>(permutation.length);
  permutation.forEach((v, i) => (inverted[v] = i));
  return g.op('Transpose', [unflipped], name, { perm: attr.ints(full(inverted)) });
}

/** Converters by tfjs class name (getClassName()). */
export const converters: Readonly<Record<string, Converter>> = {
  Conv2D: kerasConv,
  Conv3D: kerasConv,
  BlindspotCentreMaskedConv: seededConv(true),
  BlindspotDilatedConv: seededConv(false),
  BlindspotChannelBatchNorm: channelBatchNorm,
  BatchNormalization: kerasBatchNorm,
  Activation: activationLayer,
  LeakyReLU: leakyRelu,
  MaxPooling2D: maxPool,
  MaxPooling3D: maxPool,
  BlindspotMaxBlurPool: maxBlurPool('trailing'),
  BlindspotCentredMaxBlurPool: maxBlurPool('centred'),
  BlindspotNearestUpSampling: upsample,
  UpSampling2D: kerasUpSampling2d,
  Concatenate: concatenate,
  Add: add,
  BlindspotPadTop: padTop,
  BlindspotCropBottom: cropBottom,
  BlindspotShiftDown: shiftDown,
  BlindspotOrient: orientLayer,
};
