/**
 * Builds an ONNX graph node by node: unique tensor names, weights as initialisers, and the few
 * composite operations the layer converters share (flip via a negative-step Slice, row shifts).
 * Everything inside the graph is channels-first (NCHW / NCDHW), ONNX's layout for Conv and pooling.
 */
import type { OnnxAttribute, OnnxGraph, OnnxNode, OnnxTensor, OnnxValueInfo } from './proto.js';

/** The opset written: 17 (Debian's onnx 1.12 checks up to 17; ONNX Runtime 1.31 runs up to 23). */
export const OPSET = 17;
/** The IR version that goes with opset 17. */
export const IR_VERSION = 8;

export const attr = {
  int: (value: number): OnnxAttribute => ({ kind: 'int', value }),
  ints: (value: number[]): OnnxAttribute => ({ kind: 'ints', value }),
  float: (value: number): OnnxAttribute => ({ kind: 'float', value }),
  string: (value: string): OnnxAttribute => ({ kind: 'string', value }),
};

/** Smallest int64: a Slice end that runs past index 0 when stepping backwards. */
const INT64_MIN = -(2n ** 63n);

export class GraphBuilder {
  readonly nodes: OnnxNode[] = [];
  readonly initializers: OnnxTensor[] = [];
  private readonly used = new Set<string>();
  private readonly int64Constants = new Map<string, string>();
  private readonly int64Values = new Map<string, bigint[]>();

  /** A tensor name not used before, derived from `base`. */
  fresh(base: string): string {
    const clean = base.replace(/[^A-Za-z0-9_./:-]/g, '_') || 't';
    let name = clean;
    for (let i = 1; this.used.has(name); i++) name = `${clean}_${i}`;
    this.used.add(name);
    return name;
  }

  /** Reserves a name exactly as given (graph inputs and outputs). */
  reserve(name: string): string {
    if (this.used.has(name)) throw new Error(`ONNX graph: the name ${name} is taken`);
    this.used.add(name);
    return name;
  }

  /** Adds a node with one output (named after `name` unless `output` is given); returns the output name. */
  op(opType: string, inputs: string[], name: string, attributes?: Record<string, OnnxAttribute>, output?: string): string {
    const out = output ?? this.fresh(name);
    this.nodes.push({ opType, name: this.fresh(`${name}/${opType}`), inputs, outputs: [out], ...(attributes ? { attributes } : {}) });
    return out;
  }

  /** A float32 initialiser; the array is kept by reference (batch-norm folding rewrites conv weights in place before encoding). */
  floats(name: string, dims: number[], data: Float32Array): string {
    const n = this.fresh(name);
    this.initializers.push({ name: n, dims, data });
    return n;
  }

  /** A 1-D int64 initialiser (Slice / Pad parameters), shared between nodes asking for the same values. */
  int64s(values: readonly (number | bigint)[]): string {
    const key = values.join(',');
    const known = this.int64Constants.get(key);
    if (known !== undefined) return known;
    const n = this.fresh(`const_i64_${values.length}`);
    this.initializers.push({ name: n, dims: [values.length], data: BigInt64Array.from(values.map((v) => BigInt(v))) });
    this.int64Constants.set(key, n);
    this.int64Values.set(n, values.map((v) => BigInt(v)));
    return n;
  }

  /** A float32 scalar-like initialiser of shape [] (broadcasts against anything). */
  scalar(name: string, value: number): string {
    return this.floats(name, [], Float32Array.of(value));
  }

  /** Nearest upsampling by 2 on every spatial axis of a `dims`-D channels-first x: Resize, asymmetric coordinates, floor. */
  upsampleNearest(x: string, dims: number, name: string): string {
    const scales = this.floats(`${name}/scales`, [dims + 2], Float32Array.from([1, 1, ...new Array<number>(dims).fill(2)]));
    return this.op('Resize', [x, '', scales], name, {
      mode: attr.string('nearest'),
      coordinate_transformation_mode: attr.string('asymmetric'),
      nearest_mode: attr.string('floor'),
    });
  }

  /**
   * N2V2's binomial blur [1, 2, 1] / 4 per spatial axis, stride 2, zero padded, on `channels`
   * channels: a depthwise Conv (group = channels) with the separable kernel. Trailing alignment reads
   * taps 2j..2j+2 (pads 0 before, 1 after), centred 2j-1..2j+1 (1 and 1). `adjointOutputPadding` makes
   * ConvTranspose with the same kernel and attributes its adjoint, back to the even input size.
   */
  blurDown(channels: number, dims: number, alignment: 'trailing' | 'centred', name: string): { weight: string; attributes: Record<string, OnnxAttribute>; adjointOutputPadding: number[] } {
    const taps = [0.25, 0.5, 0.25];
    const taps3 = 3 ** dims;
    const kernel = new Float32Array(channels * taps3);
    for (let ch = 0; ch < channels; ch++) {
      for (let t = 0; t < taps3; t++) {
        let v = 1;
        for (let a = 0, r = t; a < dims; a++, r = Math.floor(r / 3)) v *= taps[r % 3];
        kernel[ch * taps3 + t] = v;
      }
    }
    const per = (v: number): number[] => new Array<number>(dims).fill(v);
    const before = alignment === 'centred' ? 1 : 0;
    return {
      weight: this.floats(`${name}/blur`, [channels, 1, ...per(3)], kernel),
      attributes: { group: attr.int(channels), kernel_shape: attr.ints(per(3)), strides: attr.ints(per(2)), pads: attr.ints([...per(before), ...per(1)]) },
      // The transposed output is 2 (n - 1) + 3 - before - 1 long for n = L / 2: L - before.
      adjointOutputPadding: per(before),
    };
  }

  /** x[..., start:end, ...] along `axis` (negative end counts from the end). */
  slice(x: string, axis: number, start: number, end: number | bigint, name: string): string {
    return this.op('Slice', [x, this.int64s([start]), this.int64s([end]), this.int64s([axis])], name);
  }

  /** Reverses `axes` (Slice with step -1 from the last element past the first). */
  flip(x: string, axes: number[], name: string): string {
    if (axes.length === 0) return x;
    return this.op(
      'Slice',
      [x, this.int64s(axes.map(() => -1)), this.int64s(axes.map(() => INT64_MIN)), this.int64s(axes), this.int64s(axes.map(() => -1))],
      name,
    );
  }

  /** Zero padding of `rank`-D `x`: `before[i]` / `after[i]` elements on axis i. */
  pad(x: string, before: number[], after: number[], name: string): string {
    return this.op('Pad', [x, this.int64s([...before, ...after])], name, { mode: attr.string('constant') });
  }

  /**
   * out[i] = x[i - rows] along `axis`, zeros for i < rows: pad the first rows, then drop the last.
   * In that order on purpose: ONNX Runtime's PadFusion (every optimisation level) folds a Pad that
   * feeds a MaxPool into the pool's own padding, which MaxPool ignores instead of treating as zeros:
   * a shifted row of negative values (leaky ReLU) before laine19's pooling then pooled wrongly
   * (measured: up to 1e-2 of the range). The Slice between keeps the Pad away from the pool.
   */
  shift(x: string, axis: number, rank: number, rows: number, name: string): string {
    const before = new Array<number>(rank).fill(0);
    before[axis] = rows;
    const padded = this.pad(x, before, new Array<number>(rank).fill(0), `${name}_pad`);
    return this.slice(padded, axis, 0, -rows, name);
  }

  /**
   * laine19's causal convolution, written as Pad(top r rows) -> Conv('same') -> Slice(drop the last r
   * rows), becomes one Conv whose row padding is r more before and r less after: the same output
   * (row i sees input rows i - 2r' .. i), without the padded and the uncropped copies. Only where
   * the intermediate tensors have no other reader and are not graph outputs.
   */
  fuseCausalConvolutions(graphOutputs: readonly string[]): number {
    const readers = new Map<string, OnnxNode[]>();
    for (const n of this.nodes) for (const i of n.inputs) readers.set(i, [...(readers.get(i) ?? []), n]);
    const only = (tensor: string): OnnxNode | null => {
      const r = readers.get(tensor) ?? [];
      return r.length === 1 && !graphOutputs.includes(tensor) ? r[0] : null;
    };
    const removed = new Set<OnnxNode>();
    let fused = 0;
    for (const pad of this.nodes) {
      if (pad.opType !== 'Pad' || pad.inputs.length !== 2 || pad.attributes?.['mode']?.value !== 'constant') continue;
      const pads = this.int64Values.get(pad.inputs[1]);
      if (!pads) continue;
      const rank = pads.length / 2;
      const rows = Number(pads[2]);
      if (rows < 1 || pads.some((v, i) => i !== 2 && v !== 0n)) continue;
      const conv = only(pad.outputs[0]);
      if (!conv || conv.opType !== 'Conv' || conv.inputs[0] !== pad.outputs[0]) continue;
      const slice = only(conv.outputs[0]);
      if (!slice || slice.opType !== 'Slice' || slice.inputs.length !== 4) continue;
      const [starts, ends, axes] = slice.inputs.slice(1).map((t) => this.int64Values.get(t));
      if (!starts || !ends || !axes || axes.length !== 1 || axes[0] !== 2n || starts[0] !== 0n || ends[0] !== BigInt(-rows)) continue;
      const convPads = conv.attributes?.['pads'];
      if (convPads?.kind !== 'ints') continue;
      const spatial = rank - 2;
      const newPads = [...convPads.value];
      newPads[0] += rows;
      newPads[spatial] -= rows;
      if (newPads[spatial] < 0) continue;
      conv.attributes = { ...conv.attributes, pads: attr.ints(newPads) };
      conv.inputs = [pad.inputs[0], ...conv.inputs.slice(1)];
      conv.outputs = [slice.outputs[0]];
      removed.add(pad).add(slice);
      fused++;
    }
    const kept = this.nodes.filter((n) => !removed.has(n));
    this.nodes.length = 0;
    this.nodes.push(...kept);
    return fused;
  }

  graph(name: string, inputs: OnnxValueInfo[], outputs: OnnxValueInfo[], docString?: string): OnnxGraph {
    return { name, nodes: this.nodes, initializers: this.initializers, inputs, outputs, ...(docString ? { docString } : {}) };
  }
}
