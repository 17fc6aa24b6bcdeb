/**
 * The ONNX messages a convolutional network needs (ModelProto, GraphProto, NodeProto, TensorProto,
 * ValueInfoProto, AttributeProto, OperatorSetIdProto, StringStringEntryProto), encoded as protobuf
 * by hand. Written here rather than with a protobuf library because encoding (never decoding) seven
 * message types is a few varints and length-delimited fields: a generated binding (protobufjs +
 * onnx.proto) would be a larger dependency than this file. Field numbers are onnx.proto's (ONNX 1.12+).
 */

/** Protobuf wire types. */
const VARINT = 0;
const LENGTH_DELIMITED = 2;

/** Appends protobuf fields to a list of chunks; a nested message is encoded first, then its length and bytes. */
class ProtoWriter {
  private chunks: Uint8Array[] = [];
  private scratch: number[] = [];
  length = 0;

  private flushScratch(): void {
    if (this.scratch.length === 0) return;
    this.chunks.push(Uint8Array.from(this.scratch));
    this.scratch = [];
  }

  private pushByte(b: number): void {
    this.scratch.push(b);
    this.length++;
  }

  /** An unsigned varint; negative int64 values are written as their 64-bit two's complement (10 bytes). */
  varint(value: number | bigint): void {
    let v = BigInt.asUintN(64, BigInt(value));
    if (typeof value === 'number' && (!Number.isInteger(value) || Math.abs(value) > Number.MAX_SAFE_INTEGER)) {
      throw new RangeError(`protobuf varint must be a safe integer, got ${value}`);
    }
    while (v >= 0x80n) {
      this.pushByte(Number(v & 0x7fn) | 0x80);
      v >>= 7n;
    }
    this.pushByte(Number(v));
  }

  private tag(field: number, wire: number): void {
    this.varint((field << 3) | wire);
  }

  int(field: number, value: number | bigint): void {
    this.tag(field, VARINT);
    this.varint(value);
  }

  bytes(field: number, data: Uint8Array): void {
    this.tag(field, LENGTH_DELIMITED);
    this.varint(data.length);
    this.flushScratch();
    this.chunks.push(data);
    this.length += data.length;
  }

  string(field: number, text: string): void {
    this.bytes(field, new TextEncoder().encode(text));
  }

  /** A 32-bit float field (wire type 5). */
  float(field: number, value: number): void {
    this.tag(field, 5);
    const b = new Uint8Array(4);
    new DataView(b.buffer).setFloat32(0, value, true);
    for (const x of b) this.pushByte(x);
  }

  /** Packed repeated varints (int64). */
  packedInts(field: number, values: readonly (number | bigint)[]): void {
    const inner = new ProtoWriter();
    for (const v of values) inner.varint(v);
    this.bytes(field, inner.finish());
  }

  /** Packed repeated 32-bit floats. */
  packedFloats(field: number, values: readonly number[]): void {
    this.bytes(field, new Uint8Array(Float32Array.from(values).buffer));
  }

  message(field: number, write: (w: ProtoWriter) => void): void {
    const inner = new ProtoWriter();
    write(inner);
    this.bytes(field, inner.finish());
  }

  finish(): Uint8Array {
    this.flushScratch();
    if (this.chunks.length === 1) return this.chunks[0];
    const out = new Uint8Array(this.length);
    let at = 0;
    for (const c of this.chunks) {
      out.set(c, at);
      at += c.length;
    }
    return out;
  }
}

/** TensorProto.DataType values this writer uses. */
export const DataType = { float: 1, int64: 7 } as const;

export interface OnnxTensor {
  name: string;
  dims: number[];
  /** float32 weights or int64 shape/index parameters, C order. */
  data: Float32Array | BigInt64Array;
}

export type OnnxAttribute =
  | { kind: 'int'; value: number }
  | { kind: 'ints'; value: number[] }
  | { kind: 'float'; value: number }
  | { kind: 'floats'; value: number[] }
  | { kind: 'string'; value: string };

export interface OnnxNode {
  opType: string;
  name: string;
  inputs: string[];
  outputs: string[];
  attributes?: Record<string, OnnxAttribute>;
}

/** A float32 graph input or output; a string dimension is symbolic (dynamic), a number fixed. */
export interface OnnxValueInfo {
  name: string;
  shape: (number | string)[];
  docString?: string;
}

export interface OnnxGraph {
  name: string;
  nodes: OnnxNode[];
  initializers: OnnxTensor[];
  inputs: OnnxValueInfo[];
  outputs: OnnxValueInfo[];
  docString?: string;
}

export interface OnnxModel {
  /** IR version (8 goes with opset 17). */
  irVersion: number;
  opset: number;
  producerName: string;
  producerVersion: string;
  docString?: string;
  metadata?: Record<string, string>;
  graph: OnnxGraph;
}

// AttributeProto.AttributeType
const ATTRIBUTE_TYPE = { float: 1, int: 2, string: 3, floats: 6, ints: 7 } as const;

function writeTensor(w: ProtoWriter, t: OnnxTensor): void {
  const count = t.dims.reduce((a, b) => a * b, 1);
  if (count !== t.data.length) throw new RangeError(`ONNX tensor ${t.name}: dims [${t.dims.join(', ')}] need ${count} values, got ${t.data.length}`);
  for (const d of t.dims) w.int(1, d);
  w.int(2, t.data instanceof Float32Array ? DataType.float : DataType.int64);
  w.string(8, t.name);
  // raw_data is little-endian, as are typed arrays on every platform Node supports.
  w.bytes(9, new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
}

function writeAttribute(w: ProtoWriter, name: string, a: OnnxAttribute): void {
  w.string(1, name);
  w.int(20, ATTRIBUTE_TYPE[a.kind]);
  switch (a.kind) {
    case 'float':
      w.float(2, a.value);
      break;
    case 'int':
      w.int(3, a.value);
      break;
    case 'string':
      w.string(4, a.value);
      break;
    case 'floats':
      w.packedFloats(7, a.value);
      break;
    case 'ints':
      w.packedInts(8, a.value);
      break;
  }
}

function writeNode(w: ProtoWriter, n: OnnxNode): void {
  for (const i of n.inputs) w.string(1, i);
  for (const o of n.outputs) w.string(2, o);
  w.string(3, n.name);
  w.string(4, n.opType);
  for (const [name, a] of Object.entries(n.attributes ?? {})) w.message(5, (aw) => writeAttribute(aw, name, a));
}

function writeValueInfo(w: ProtoWriter, v: OnnxValueInfo): void {
  w.string(1, v.name);
  // TypeProto { tensor_type (1): { elem_type (1), shape (2): { dim (1): { dim_value (1) | dim_param (2) } } } }
  w.message(2, (type) =>
    type.message(1, (tensor) => {
      tensor.int(1, DataType.float);
      tensor.message(2, (shape) => {
        for (const d of v.shape) shape.message(1, (dim) => (typeof d === 'number' ? dim.int(1, d) : dim.string(2, d)));
      });
    }),
  );
  if (v.docString) w.string(3, v.docString);
}

function writeGraph(w: ProtoWriter, g: OnnxGraph): void {
  for (const n of g.nodes) w.message(1, (nw) => writeNode(nw, n));
  w.string(2, g.name);
  for (const t of g.initializers) w.message(5, (tw) => writeTensor(tw, t));
  if (g.docString) w.string(10, g.docString);
  for (const v of g.inputs) w.message(11, (vw) => writeValueInfo(vw, v));
  for (const v of g.outputs) w.message(12, (vw) => writeValueInfo(vw, v));
}

/** Serialises a model to the bytes of an .onnx file. */
export function encodeModel(m: OnnxModel): Uint8Array {
  const w = new ProtoWriter();
  w.int(1, m.irVersion);
  w.string(2, m.producerName);
  w.string(3, m.producerVersion);
  if (m.docString) w.string(6, m.docString);
  w.message(7, (gw) => writeGraph(gw, m.graph));
  // OperatorSetIdProto { domain (1): '' (the default ai.onnx domain), version (2) }
  w.message(8, (ow) => {
    ow.string(1, '');
    ow.int(2, m.opset);
  });
  for (const [key, value] of Object.entries(m.metadata ?? {})) {
    w.message(14, (kv) => {
      kv.string(1, key);
      kv.string(2, value);
    });
  }
  return w.finish();
}
