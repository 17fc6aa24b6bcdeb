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
    return n;
  }

  /** A float32 scalar-like initialiser of shape [] (broadcasts against anything). */
  scalar(name: string, value: number): string {
    return this.floats(name, [], Float32Array.of(value));
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

  graph(name: string, inputs: OnnxValueInfo[], outputs: OnnxValueInfo[], docString?: string): OnnxGraph {
    return { name, nodes: this.nodes, initializers: this.initializers, inputs, outputs, ...(docString ? { docString } : {}) };
  }
}
