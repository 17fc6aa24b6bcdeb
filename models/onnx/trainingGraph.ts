/**
 * A network's loss and gradients as a plain ONNX graph: the forward pass, the masked loss, and the
 * backward pass written out op by op, so that ONNX Runtime's inference build (the one npm ships;
 * its training build is not published for Node) computes what tf.variableGrads computes, on its
 * native CPU kernels instead of tfjs' wasm ones (engines/onnxGradients.ts runs it).
 *
 * Interface, all float32: inputs `input`, `target`, `mask` [batch, (z,) y, x, 1] (NHWC / NDHWC,
 * normalised units, mask 0/1), then one input per trainable weight in `model.trainableWeights` order and tfjs' layout
 * (`weight_<i>`; conv kernels [kh, kw, cin, cout]) and one per non-trainable weight (`state_<j>`,
 * model.nonTrainableWeights order: batch norm's moving statistics); outputs `loss` (scalar),
 * `gradient_<i>`, the same shapes, and `state_<j>_next`, the moving statistics after this batch.
 * Inside, the graph is channels-first; kernels are transposed in and their gradients out. 2D and 3D
 * networks alike: every op below has its 3D form (k^3 taps, 2x2x2 pooling and blocks).
 *
 * The gradients of each op, with x the op's input and y its output:
 * - Conv (odd cubic kernel, stride 1, 'same'): dx = ConvTranspose(dy, w); dw tap by tap, one MatMul
 *   of each shifted view of x with dy per kernel tap (filterGradientByTaps says why this form);
 *   db = sum of dy over batch and space.
 * - Relu: dx = dy where y > 0 (the output's sign is the input's).
 * - MaxPool 2 per axis: MaxUnpool of dy at the pool's argmax indices.
 * - N2V2's max-blur-pool: the blur's adjoint (ConvTranspose of the same depthwise kernel), then the
 *   stride-1 max pairs axis by axis, each sending dy to the larger of x[i] and x[i + 1].
 * - Nearest upsampling 2x per axis: the sum over each block of 2^d, AveragePool * 2^d.
 * - Concat: Split. A tensor read by several calls sums their gradients.
 * - Batch norm (training mode, models/layers.ts ChannelBatchNorm): the batch's biased moments;
 *   dx = gamma * rstd * (dy - mean(dy) - xhat * mean(dy * xhat)), dgamma = sum(dy * xhat), dbeta = sum(dy);
 *   moving = moving - (moving - batch) * (1 - momentum), as the layer updates them.
 * - Leaky ReLU: dy where the output is positive, alpha dy elsewhere. Add: dy to each input.
 * - D-BSN's convolutions: the centre-masked one multiplies the kernel and its gradient by the 0/1
 *   mask; the dilated one has Conv's dilations, and the filter gradient's taps are that far apart.
 * - laine19's PadTop, CropBottom, ShiftDown and Orient: their adjoints (a crop, a pad, the opposite
 *   shift, the opposite rotation). A convolution called by several branches sums its gradient parts.
 * - DivNoising's latent sample and KL (models/onnx/latentGradients.ts); the sample's eps is a graph
 *   input (`noise_<k>`, TrainingGraph.noiseInputs), drawn by the layer itself.
 * Anything else (dilations, strides, other activations) is an UnsupportedLayerError naming
 * the layer: the trainer then says which engine to use instead.
 */
import type * as tfl from '@tensorflow/tfjs-layers';
import { GraphBuilder, IR_VERSION, OPSET, attr } from './graph.js';
import { callsInOrder, type SymbolicTensorLike } from './layerCalls.js';
import { converters, orientAxes, ROWS, UnsupportedLayerError, type ConvertContext } from './layers.js';
import { latentKl, latentSample, splitLatentChannels, SPATIAL_DIVISOR, type LatentHalves, type NoiseInput } from './latentGradients.js';
import { encodeModel, type OnnxValueInfo } from './proto.js';

/** The per-pixel error the masked loss averages over masked pixels (models/losses.ts maskedLoss). */
export type TrainingGraphLoss = 'mse' | 'mae';

export interface TrainingGraph {
  bytes: Uint8Array;
  /** Graph input names of the trainable weights, in model.trainableWeights order. */
  weightInputs: string[];
  /** Graph output names of their gradients, same order. */
  gradientOutputs: string[];
  /** Graph input names of the non-trainable weights, in model.nonTrainableWeights order. */
  stateInputs: string[];
  /** Graph output names of their values after the step, same order. */
  stateOutputs: string[];
  /** Random draws the graph takes as inputs (a VAE's eps), in layer-call order. */
  noiseInputs: NoiseInput[];
}

/** Slice end past the last element (ONNX clamps it). */
const TO_END = 2n ** 62n;

interface Config {
  [key: string]: unknown;
}

function single(v: unknown): number {
  return Array.isArray(v) ? (v.every((e) => e === v[0]) ? (v[0] as number) : NaN) : (v as number);
}

/**
 * Builds the loss-and-gradients graph of a one-input, one-channel-output 2D or 3D network. Throws
 * UnsupportedLayerError for a layer or configuration the backward pass does not cover.
 */
export function buildTrainingGraph(model: tfl.LayersModel, loss: TrainingGraphLoss): TrainingGraph {
  return buildGraph(model, { kind: 'gradients', loss });
}

/**
 * The same network's forward pass in training mode, without gradients: input `input` and the
 * weight and state inputs as above; outputs `prediction` (the input's shape, channels-last) and
 * `state_<j>_next`. For losses that read the network's output on the batch first (a target made
 * from it, no gradient through it: neighbor2neighbor's regulariser).
 */
export function buildForwardGraph(model: tfl.LayersModel): TrainingGraph {
  return buildGraph(model, { kind: 'forward' });
}

/**
 * The gradients of any loss computed outside the graph from the network's output: input `input`,
 * `dprediction` (the loss's gradient with respect to the output, the output's shape, channels-last)
 * and the weight and state inputs; outputs `gradient_<i>` and `state_<j>_next`. Any number of output
 * channels (a Gaussian prior's two, PN2V's samples).
 */
export function buildVjpGraph(model: tfl.LayersModel): TrainingGraph {
  return buildGraph(model, { kind: 'vjp' });
}

function buildGraph(model: tfl.LayersModel, mode: { kind: 'gradients'; loss: TrainingGraphLoss } | { kind: 'forward' } | { kind: 'vjp' }): TrainingGraph {
  if (model.inputs.length !== 1 || model.outputs.length !== 1) throw new UnsupportedLayerError(model.name, 'the network must have one input and one output');
  const inputTensor = model.inputs[0] as unknown as SymbolicTensorLike;
  const outputTensor = model.outputs[0] as unknown as SymbolicTensorLike;
  const rank = inputTensor.shape.length;
  const dims = rank - 2;
  if ((dims !== 2 && dims !== 3) || inputTensor.shape[rank - 1] !== 1) throw new UnsupportedLayerError(model.name, `input shape [${inputTensor.shape.join(', ')}]: the training graph takes 2D or 3D with one channel`);
  const outputChannels = outputTensor.shape[rank - 1] ?? 0;
  if (mode.kind === 'gradients' && outputChannels !== 1) throw new UnsupportedLayerError(model.name, `${outputChannels} output channels (the training graph's masked loss takes one)`);
  const spatialAxes = dims === 2 ? [2, 3] : [2, 3, 4];
  const batchAndSpace = [0, ...spatialAxes];
  const repeat = (v: number): number[] => spatialAxes.map(() => v);
  /** Pad amounts: `rows` on the first spatial axis (channels-first axis 2), none elsewhere. */
  const rowsAt = (rows: number): number[] => Array.from({ length: rank }, (_, a) => (a === ROWS ? rows : 0));
  const perChannel = (channels: number): string => g.int64s([1, channels, ...repeat(1)]);
  // Channels-last <-> channels-first; tfjs kernels [k.., cin, cout] <-> ONNX [cout, cin, k..].
  const toChannelsFirst = [0, rank - 1, ...spatialAxes.map((a) => a - 1)];
  const kernelToOnnx = [rank - 1, rank - 2, ...spatialAxes.map((a) => a - 2)];

  const g = new GraphBuilder();
  const inputName = g.reserve('input');
  const targetName = g.reserve('target');
  const maskName = g.reserve('mask');
  const lossName = g.reserve('loss');
  const dPredictionName = g.reserve('dprediction');
  const predictionName = g.reserve('prediction');
  const nchw = (x: string, name: string): string => g.op('Transpose', [x], name, { perm: attr.ints(toChannelsFirst) });

  // Weights: one graph input per trainable variable, matched by the variable's identity.
  const trainable = model.trainableWeights.map((w) => w.read());
  const weightInputs = trainable.map((_, i) => g.reserve(`weight_${i}`));
  const gradientOutputs = trainable.map((_, i) => g.reserve(`gradient_${i}`));
  const weightIndex = new Map<number, number>(trainable.map((v, i) => [v.id, i]));
  // A weight's gradient: one part per call of its layer (laine19's branches share theirs), summed.
  const gradientParts: string[][] = trainable.map(() => []);
  const calls = new Array<number>(trainable.length).fill(0);
  const state = model.nonTrainableWeights.map((w) => w.read());
  const stateInputs = state.map((_, j) => g.reserve(`state_${j}`));
  const stateOutputs = state.map((_, j) => g.reserve(`state_${j}_next`));
  const stateIndex = new Map<number, number>(state.map((v, j) => [v.id, j]));
  const stateNext = new Array<string | undefined>(state.length);
  const indexOfState = (layer: tfl.layers.Layer, which: number): number => {
    const v = layer.nonTrainableWeights[which]?.read();
    const j = v === undefined ? undefined : stateIndex.get(v.id);
    if (j === undefined || stateNext[j] !== undefined) throw new UnsupportedLayerError(layer.name, 'a moving statistic that is not among the model\'s non-trainable weights, or shared');
    return j;
  };
  const indexOfWeight = (layer: tfl.layers.Layer, which: number, shared: 'shareable' | 'once'): number => {
    const v = layer.trainableWeights[which]?.read();
    const i = v === undefined ? undefined : weightIndex.get(v.id);
    if (i === undefined) throw new UnsupportedLayerError(layer.name, 'a weight that is not among the model\'s trainable weights (frozen layers are not supported)');
    if (shared === 'once' && calls[i] > 0) throw new UnsupportedLayerError(layer.name, 'a layer with moving statistics called more than once');
    calls[i]++;
    return i;
  };
  /** Where a call's part of weight i's gradient goes: the output itself when the layer has one call. */
  const gradientPart = (i: number): string | undefined => (calls[i] === 1 ? gradientOutputs[i] : undefined);
  const addGradientPart = (i: number, part: string): void => void gradientParts[i].push(part);

  const names = new Map<number, string>();
  const backward: Array<() => void> = [];
  const grads = new Map<string, string>();
  const addGradient = (x: string, dx: string, name: string): void => {
    const known = grads.get(x);
    grads.set(x, known === undefined ? dx : g.op('Add', [known, dx], `${name}_sum`));
  };
  const zero = g.scalar('zero', 0);
  /** ReLU's gradient: dy where its output is positive (the output's sign is the input's). */
  const reluGradient = (out: string, dy: string, name: string): string => g.op('Where', [g.op('Greater', [out, zero], `${name}_active`), dy, zero], `${name}_drelu`);
  interface ConvShape {
    k: number;
    /** Spacing of the taps (D-BSN's dilated convolutions); 1 for a plain one. */
    dilation: number;
    cin: number;
    cout: number;
    pad: number;
    name: string;
  }
  /**
   * dw tap by tap: dw[tap] = sum_b view_b dz_b^T ([cin, cout], tfjs' layout per tap), one MatMul per
   * shifted view of xpad; each view is freed after its MatMul, so memory holds about one copy of x.
   * The im2col form (all k^dims views concatenated, one MatMul) ran at the same speed and held 4x the
   * memory in 3D (12.6 against 3.2 GiB at batch 4 of 16x64x64); the Conv-as-filter form, dw =
   * Conv(x^T, dy^T), ran 2x slower, its GEMMs having k^dims columns.
   */
  const filterGradientByTaps = (x: string, dz: string, c: ConvShape, output: string | undefined): string => {
    const { k, dilation, cin, cout, pad, name } = c;
    const dzColumns = g.op('Transpose', [g.op('Reshape', [dz, g.int64s([0, cout, -1])], `${name}_dz_rows`)], `${name}_dz_columns`, { perm: attr.ints([0, 2, 1]) });
    const xpad = k > 1 ? g.pad(x, [0, 0, ...repeat(pad)], [0, 0, ...repeat(pad)], `${name}_xpad`) : x;
    const end = (o: number): bigint | number => (o === k - 1 ? TO_END : (o - (k - 1)) * dilation);
    const perTap = Array.from({ length: k ** dims }, (_, t) => {
      // The tap's (z,) y, x offsets, row-major over the k^dims taps; its view of xpad.
      const offsets = spatialAxes.map((_, a) => Math.floor(t / k ** (dims - 1 - a)) % k);
      const view = k > 1 ? g.op('Slice', [xpad, g.int64s(offsets.map((o) => o * dilation)), g.int64s(offsets.map(end)), g.int64s(spatialAxes)], `${name}_tap${offsets.join('')}`) : x;
      const rows = g.op('Reshape', [view, g.int64s([0, cin, -1])], `${name}_rows${offsets.join('')}`);
      const perBatch = g.op('MatMul', [rows, dzColumns], `${name}_dw_batch${offsets.join('')}`);
      return g.op('ReduceSum', [perBatch, g.int64s([0])], `${name}_dw${offsets.join('')}`, { keepdims: attr.int(1) });
    });
    // [taps, cin, cout] is tfjs' [k.., cin, cout] flattened.
    const stacked = perTap.length === 1 ? perTap[0] : g.op('Concat', perTap, `${name}_dw_taps`, { axis: attr.int(0) });
    return g.op('Reshape', [stacked, g.int64s([...repeat(k), cin, cout])], `${name}_dw`, undefined, output);
  };
  const input = nchw(inputName, 'input_nchw');
  const divisors = new Map<string, number>([[input, 1]]);
  const noiseInputs: NoiseInput[] = [];
  const latents = new Map<string, LatentHalves>();
  const latentHalves = (x: string, channels: number, name: string): LatentHalves => {
    const known = latents.get(x) ?? splitLatentChannels(g, x, channels, name);
    latents.set(x, known);
    return known;
  };
  const exportContext: ConvertContext = { g, dims, foldable: new Map(), sharedWeights: new Map() };

  for (const call of callsInOrder(outputTensor)) {
    const layer = call.outboundLayer;
    const className = layer.getClassName();
    if (className === 'InputLayer') {
      names.set(inputTensor.id, input);
      continue;
    }
    if (call.outputTensors.length !== 1) throw new UnsupportedLayerError(layer.name, 'a layer with several outputs');
    const xs = call.inputTensors.map((t) => {
      const n = names.get(t.id);
      if (n === undefined) throw new Error(`training graph: ${layer.name} reads a tensor not built yet`);
      return n;
    });
    const channels = call.inputTensors.map((t) => t.shape[rank - 1] ?? 0);
    const c = layer.getConfig() as Config;
    const name = layer.name;
    // The forward op of a weightless layer, as the exporter writes it (the cases below add its gradient).
    const exported = (): string => converters[className](exportContext, { layer, inputs: xs, inputChannels: channels, soleReader: false });
    let y: string;
    switch (className) {
      case 'Conv2D':
      case 'Conv3D':
      case 'BlindspotCentreMaskedConv':
      case 'BlindspotDilatedConv': {
        // D-BSN's convolutions ('same', stride 1, linear): the centre tap masked out of the kernel, or dilated taps.
        const seeded = className.startsWith('Blindspot');
        const k = single(c['kernelSize']);
        const dilation = className === 'BlindspotDilatedConv' ? (c['dilation'] as number) : 1;
        if (!(k % 2 === 1) || (!seeded && (single(c['strides'] ?? 1) !== 1 || single(c['dilationRate'] ?? 1) !== 1 || (k > 1 && c['padding'] !== 'same')))) {
          throw new UnsupportedLayerError(name, `kernel ${JSON.stringify(c['kernelSize'])}, strides ${JSON.stringify(c['strides'])}, dilation ${JSON.stringify(c['dilationRate'])}, padding ${String(c['padding'])} (the training graph takes odd square kernels, stride 1, no dilation, 'same')`);
        }
        const centreMask = className === 'BlindspotCentreMaskedConv' ? g.floats(`${name}/centre_mask`, [...repeat(k), 1, 1], Float32Array.from({ length: k ** dims }, (_, t) => (t === (k ** dims - 1) / 2 ? 0 : 1))) : null;
        const act = c['activation'] ?? 'linear';
        if (act !== 'linear' && act !== 'relu') throw new UnsupportedLayerError(name, `activation '${String(act)}'`);
        const cin = channels[0];
        const cout = c['filters'] as number;
        const wi = indexOfWeight(layer, 0, 'shareable');
        const bi = c['useBias'] === false ? null : indexOfWeight(layer, 1, 'shareable');
        const x = xs[0];
        const pad = (dilation * (k - 1)) / 2;
        const convAttrs = { kernel_shape: attr.ints(repeat(k)), pads: attr.ints(repeat(pad).concat(repeat(pad))), ...(dilation > 1 ? { dilations: attr.ints(repeat(dilation)) } : {}) };
        const kernel = centreMask ? g.op('Mul', [weightInputs[wi], centreMask], `${name}_masked_kernel`) : weightInputs[wi];
        const w = g.op('Transpose', [kernel], `${name}_w_onnx`, { perm: attr.ints(kernelToOnnx) });
        const z = g.op('Conv', bi === null ? [x, w] : [x, w, weightInputs[bi]], name, convAttrs);
        y = act === 'relu' ? g.op('Relu', [z], `${name}_relu`) : z;
        const out = y;
        const readsInput = x === input;
        backward.push(() => {
          let dz = grads.get(out);
          if (dz === undefined) throw new Error(`training graph: no gradient reaches ${name}`);
          if (act === 'relu') dz = reluGradient(out, dz, name);
          if (!readsInput) addGradient(x, g.op('ConvTranspose', [dz, w], `${name}_dx`, convAttrs), `${name}_dx`);
          const dw = filterGradientByTaps(x, dz, { k, dilation, cin, cout, pad, name }, centreMask ? undefined : gradientPart(wi));
          addGradientPart(wi, centreMask ? g.op('Mul', [dw, centreMask], `${name}_dw_masked`, undefined, gradientPart(wi)) : dw);
          if (bi !== null) addGradientPart(bi, g.op('ReduceSum', [dz, g.int64s(batchAndSpace)], `${name}_db`, { keepdims: attr.int(0) }, gradientPart(bi)));
        });
        break;
      }
      case 'Activation': {
        if (c['activation'] !== 'relu') throw new UnsupportedLayerError(name, `activation '${String(c['activation'])}'`);
        const x = xs[0];
        const out = (y = g.op('Relu', [x], name));
        backward.push(() => addGradient(x, reluGradient(out, grads.get(out)!, name), `${name}_dx`));
        break;
      }
      case 'MaxPooling2D':
      case 'MaxPooling3D': {
        if (single(c['poolSize']) !== 2 || single(c['strides'] ?? 2) !== 2 || c['padding'] !== 'valid') throw new UnsupportedLayerError(name, 'pooling other than 2 per axis, stride 2, valid');
        const x = xs[0];
        const out = (y = g.fresh(name));
        const indices = g.fresh(`${name}_argmax`);
        const pool = { kernel_shape: attr.ints(repeat(2)), strides: attr.ints(repeat(2)) };
        g.nodes.push({ opType: 'MaxPool', name: g.fresh(`${name}/MaxPool`), inputs: [x], outputs: [out, indices], attributes: pool });
        backward.push(() => addGradient(x, g.op('MaxUnpool', [grads.get(out)!, indices, g.op('Shape', [x], `${name}_shape`)], `${name}_dx`, pool), `${name}_dx`));
        break;
      }
      case 'BlindspotMaxBlurPool':
      case 'BlindspotCentredMaxBlurPool': {
        // The max pool as tfjs computes it (models/layers.ts maxPairAlongAxis), axis by axis: m = Max(x, next)
        // with next[i] = x[i + 1] and next[L - 1] = x[L - 1]; a tie routes the gradient to x[i], as tfjs' Maximum.
        const x = xs[0];
        const pairs: Array<{ from: string; next: string; axis: number; to: string }> = [];
        let maxed = x;
        spatialAxes.forEach((axis, a) => {
          const next = g.op('Concat', [g.slice(maxed, axis, 1, TO_END, `${name}_after${a}`), g.slice(maxed, axis, -1, TO_END, `${name}_last${a}`)], `${name}_next${a}`, { axis: attr.int(axis) });
          const to = g.op('Max', [maxed, next], `${name}_max${a}`);
          pairs.push({ from: maxed, next, axis, to });
          maxed = to;
        });
        const blur = g.blurDown(channels[0], dims, className === 'BlindspotCentredMaxBlurPool' ? 'centred' : 'trailing', name);
        const out = (y = g.op('Conv', [maxed, blur.weight], name, blur.attributes));
        backward.push(() => {
          let d = g.op('ConvTranspose', [grads.get(out)!, blur.weight], `${name}_dblur`, { ...blur.attributes, output_padding: attr.ints(blur.adjointOutputPadding) });
          for (const { from, next, axis, to } of pairs.reverse()) {
            const own = g.op('GreaterOrEqual', [from, next], `${to}_own`);
            const dNext = g.op('Where', [own, zero, d], `${to}_dnext`);
            // next[i] is x[i + 1], so its gradient moves one along the axis; next[L - 1] (x[L - 1] itself) ties and gets none.
            const fromNext = g.shift(dNext, axis, rank, 1, `${to}_dfrom_next`);
            d = g.op('Add', [g.op('Where', [own, d, zero], `${to}_dself`), fromNext], `${to}_dx`);
          }
          addGradient(x, d, `${name}_dx`);
        });
        break;
      }
      case 'LeakyReLU': {
        const x = xs[0];
        const alpha = (c['alpha'] as number | undefined) ?? 0.3;
        if (!(alpha > 0)) throw new UnsupportedLayerError(name, `leaky ReLU slope ${alpha} (the gradient reads the output's sign)`);
        const out = (y = exported());
        backward.push(() => {
          const dy = grads.get(out)!;
          addGradient(x, g.op('Where', [g.op('Greater', [out, zero], `${name}_active`), dy, g.op('Mul', [dy, g.scalar(`${name}/alpha`, alpha)], `${name}_leak`)], `${name}_dx`), `${name}_dx`);
        });
        break;
      }
      // laine19's row layers on the first spatial axis (channels-first axis 2) and its rotations:
      // each gradient is the adjoint of a pad, crop, shift or rotation.
      case 'BlindspotPadTop': {
        const x = xs[0];
        const rows = c['rows'] as number;
        const out = (y = exported());
        backward.push(() => addGradient(x, g.slice(grads.get(out)!, ROWS, rows, TO_END, `${name}_dx`), `${name}_dx`));
        break;
      }
      case 'BlindspotCropBottom': {
        const x = xs[0];
        const rows = c['rows'] as number;
        const out = (y = exported());
        backward.push(() => addGradient(x, g.pad(grads.get(out)!, rowsAt(0), rowsAt(rows), `${name}_dx`), `${name}_dx`));
        break;
      }
      case 'BlindspotShiftDown': {
        const x = xs[0];
        const shift = c['shift'] as number;
        const out = (y = exported());
        backward.push(() => addGradient(x, g.slice(g.pad(grads.get(out)!, rowsAt(0), rowsAt(shift), `${name}_dpad`), ROWS, shift, TO_END, `${name}_dx`), `${name}_dx`));
        break;
      }
      case 'BlindspotOrient': {
        const x = xs[0];
        const orientation = { permutation: c['permutation'] as number[], flips: c['flips'] as number[] };
        const inverse = c['inverse'] === true;
        const out = (y = exported());
        backward.push(() => addGradient(x, orientAxes(g, grads.get(out)!, orientation, !inverse, `${name}_dx`), `${name}_dx`));
        break;
      }
      case 'Add': {
        const out = (y = exported());
        backward.push(() => xs.forEach((x) => addGradient(x, grads.get(out)!, `${name}_dx`)));
        break;
      }
      case 'BlindspotNearestUpSampling': {
        const x = xs[0];
        const out = (y = g.upsampleNearest(x, dims, name));
        const blockSize = g.scalar(`${name}/block_size`, 2 ** dims);
        backward.push(() => {
          const mean = g.op('AveragePool', [grads.get(out)!], `${name}_block_mean`, { kernel_shape: attr.ints(repeat(2)), strides: attr.ints(repeat(2)) });
          addGradient(x, g.op('Mul', [mean, blockSize], `${name}_dx`), `${name}_dx`);
        });
        break;
      }
      case 'Concatenate': {
        const axis = (c['axis'] as number | undefined) ?? -1;
        if (axis !== -1 && axis !== rank - 1) throw new UnsupportedLayerError(name, `concatenation along axis ${axis} (channels only)`);
        const out = (y = g.op('Concat', xs, name, { axis: attr.int(1) }));
        backward.push(() => {
          const parts = xs.map((x) => g.fresh(`${name}_d${x}`));
          g.nodes.push({ opType: 'Split', name: g.fresh(`${name}/Split`), inputs: [grads.get(out)!, g.int64s(channels)], outputs: parts, attributes: { axis: attr.int(1) } });
          xs.forEach((x, i) => addGradient(x, parts[i], `${name}_dx${i}`));
        });
        break;
      }
      case 'BlindspotChannelBatchNorm': {
        const x = xs[0];
        const cin = channels[0];
        const gi = indexOfWeight(layer, 0, 'once');
        const bi = indexOfWeight(layer, 1, 'once');
        const [mi, vi] = [indexOfState(layer, 0), indexOfState(layer, 1)];
        // opset 17: ReduceMean takes its axes as an attribute (ReduceSum as an input).
        const meanOver = (t: string, n: string): string => g.op('ReduceMean', [t], n, { axes: attr.ints(batchAndSpace), keepdims: attr.int(1) });
        const channelShape = perChannel(cin);
        const mean = meanOver(x, `${name}_mean`);
        const centred = g.op('Sub', [x, mean], `${name}_centred`);
        const variance = meanOver(g.op('Mul', [centred, centred], `${name}_square`), `${name}_variance`);
        const rstd = g.op('Reciprocal', [g.op('Sqrt', [g.op('Add', [variance, g.scalar(`${name}/epsilon`, c['epsilon'] as number)], `${name}_var_eps`)], `${name}_std`)], `${name}_rstd`);
        const xhat = g.op('Mul', [centred, rstd], `${name}_xhat`);
        const gamma = g.op('Reshape', [weightInputs[gi], channelShape], `${name}_gamma`);
        const out = (y = g.op('Add', [g.op('Mul', [xhat, gamma], `${name}_scaled`), g.op('Reshape', [weightInputs[bi], channelShape], `${name}_beta`)], name));
        const decay = g.scalar(`${name}/decay`, 1 - (c['momentum'] as number));
        const flat = g.int64s([cin]);
        for (const [j, batch] of [[mi, mean], [vi, variance]] as const) {
          const old = stateInputs[j];
          const moved = g.op('Mul', [g.op('Sub', [old, g.op('Reshape', [batch, flat], `${name}_batch_${j}`)], `${name}_gap_${j}`), decay], `${name}_move_${j}`);
          stateNext[j] = g.op('Sub', [old, moved], `${name}_next_${j}`, undefined, stateOutputs[j]);
        }
        backward.push(() => {
          const dy = grads.get(out)!;
          const dyXhat = g.op('Mul', [dy, xhat], `${name}_dy_xhat`);
          addGradientPart(bi, g.op('ReduceSum', [dy, g.int64s(batchAndSpace)], `${name}_dbeta`, { keepdims: attr.int(0) }, gradientOutputs[bi]));
          addGradientPart(gi, g.op('ReduceSum', [dyXhat, g.int64s(batchAndSpace)], `${name}_dgamma`, { keepdims: attr.int(0) }, gradientOutputs[gi]));
          const centredDy = g.op('Sub', [g.op('Sub', [dy, meanOver(dy, `${name}_dy_mean`)], `${name}_dy_c`), g.op('Mul', [xhat, meanOver(dyXhat, `${name}_dy_xhat_mean`)], `${name}_proj`)], `${name}_dy_centred`);
          addGradient(x, g.op('Mul', [centredDy, g.op('Mul', [gamma, rstd], `${name}_gain`)], `${name}_dx`), `${name}_dx`);
        });
        break;
      }
      case 'BlindspotVaeSample': {
        const x = xs[0];
        const halves = latentHalves(x, channels[0], `${name}_latent`);
        const noise = g.reserve(`noise_${noiseInputs.length}`);
        noiseInputs.push({ name: noise, layer: name, channels: halves.channels, divisor: divisors.get(x) ?? 1 });
        const sample = latentSample(g, halves, nchw(noise, `${noise}_nchw`), name);
        const out = (y = sample.z);
        backward.push(() => addGradient(x, sample.backward(grads.get(out)!), `${name}_dx`));
        break;
      }
      case 'BlindspotVaeKl': {
        const x = xs[0];
        const kl = latentKl(g, latentHalves(x, channels[0], `${name}_latent`), c['spread'] as number, name);
        const out = (y = kl.kl);
        backward.push(() => addGradient(x, kl.backward(grads.get(out)!), `${name}_dx`));
        break;
      }
      default:
        throw new UnsupportedLayerError(name, `no training-graph gradient for tfjs layer class ${className}`);
    }
    divisors.set(y, (divisors.get(xs[0]) ?? 1) * (SPATIAL_DIVISOR[className] ?? 1));
    names.set(call.outputTensors[0].id, y);
  }

  const prediction = names.get(outputTensor.id);
  if (prediction === undefined) throw new Error('training graph: the output was not built');
  state.forEach((_, j) => {
    if (stateNext[j] === undefined) throw new UnsupportedLayerError(model.name, `the non-trainable weight ${model.nonTrainableWeights[j].name} is updated by no layer the graph covers`);
  });
  const batchShape = dims === 2 ? ['batch', 'y', 'x', 1] : ['batch', 'z', 'y', 'x', 1];
  // Every mode's inputs besides the batch: the noise draws, the weights, the state.
  const sharedInputs: OnnxValueInfo[] = [
    ...noiseInputs.map((n, k) => ({ name: n.name, shape: [batchShape[0], ...batchShape.slice(1, -1).map((d) => `${d}_latent${k}`), n.channels] })),
    ...trainable.map((v, i) => ({ name: weightInputs[i], shape: v.shape })),
    ...state.map((v, j) => ({ name: stateInputs[j], shape: v.shape })),
  ];
  const stateValues: OnnxValueInfo[] = state.map((v, j) => ({ name: stateOutputs[j], shape: v.shape }));
  const encode = (inputs: OnnxValueInfo[], outputs: OnnxValueInfo[], doc: string): Uint8Array =>
    encodeModel({ irVersion: IR_VERSION, opset: OPSET, producerName: 'blindspot', producerVersion: 'training-graph', graph: g.graph(`blindspot_${mode.kind}_${model.name}`, inputs, outputs, doc) });

  const outputShape = [...batchShape.slice(0, -1), outputChannels];
  if (mode.kind === 'forward') {
    g.op('Transpose', [prediction], 'prediction_nhwc', { perm: attr.ints([0, ...spatialAxes, 1]) }, predictionName);
    const bytes = encode([{ name: inputName, shape: batchShape }, ...sharedInputs], [{ name: predictionName, shape: outputShape }, ...stateValues], 'the forward pass in training mode');
    return { bytes, weightInputs, gradientOutputs: [], stateInputs, stateOutputs, noiseInputs };
  }
  const gradientValues = trainable.map((v, i) => ({ name: gradientOutputs[i], shape: v.shape }));
  const backwardFrom = (dPrediction: string): void => {
    grads.set(prediction, dPrediction);
    for (const step of backward.reverse()) step();
    trainable.forEach((v, i) => {
      const parts = gradientParts[i];
      if (parts.length === 0) throw new UnsupportedLayerError(model.name, `the trainable weight ${model.trainableWeights[i].name} is used by no layer the graph covers`);
      if (parts.length > 1) g.op('Sum', parts, `gradient_${i}_calls`, undefined, gradientOutputs[i]);
    });
  };
  if (mode.kind === 'vjp') {
    backwardFrom(nchw(dPredictionName, 'dprediction_nchw'));
    const bytes = encode([{ name: inputName, shape: batchShape }, { name: dPredictionName, shape: outputShape }, ...sharedInputs], [...gradientValues, ...stateValues], 'the gradients of a loss on the output, given its gradient');
    return { bytes, weightInputs, gradientOutputs, stateInputs, stateOutputs, noiseInputs };
  }
  const loss = mode.loss;
  // loss = sum(mask * e(p - t)) / max(sum(mask), 1); e = square or abs (models/losses.ts maskedLoss).
  const target = nchw(targetName, 'target_nchw');
  const mask = nchw(maskName, 'mask_nchw');
  const diff = g.op('Sub', [prediction, target], 'diff');
  const maskedDiff = g.op('Mul', [diff, mask], 'masked_diff');
  const count = g.op('Max', [g.op('ReduceSum', [mask], 'mask_count', { keepdims: attr.int(0) }), g.scalar('one', 1)], 'mask_count_clamped');
  const error = loss === 'mse' ? g.op('Mul', [maskedDiff, diff], 'masked_square') : g.op('Abs', [maskedDiff], 'masked_abs');
  g.op('Div', [g.op('ReduceSum', [error], 'error_sum', { keepdims: attr.int(0) }), count], 'masked_mean', undefined, lossName);
  const dPrediction =
    loss === 'mse' ? g.op('Mul', [maskedDiff, g.scalar('two', 2)], 'dloss_square') : g.op('Mul', [g.op('Sign', [diff], 'diff_sign'), mask], 'dloss_abs');
  backwardFrom(g.op('Div', [dPrediction, count], 'dprediction_masked'));
  const bytes = encode(
    [{ name: inputName, shape: batchShape }, { name: targetName, shape: batchShape }, { name: maskName, shape: batchShape }, ...sharedInputs],
    [{ name: lossName, shape: [] }, ...gradientValues, ...stateValues],
    `masked ${loss} loss and its gradients`,
  );
  return { bytes, weightInputs, gradientOutputs, stateInputs, stateOutputs, noiseInputs };
}
