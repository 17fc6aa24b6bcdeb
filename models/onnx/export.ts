/**
 * A trained network as ONNX: the tfjs LayersModel's graph walked from its output, each layer call
 * turned into ONNX ops (models/onnx/layers.ts), and for Gaussian-prior models the posterior tail
 * (models/onnx/posterior.ts), so the graph gives what `blindspot denoise` gives.
 *
 * Interface: one input `input`, float32 [batch, (z,) y, x, 1] (NHWC / NDHWC, exactly the tiles the
 * tfjs model takes), in normalised units (models/normalise.ts: (raw - offset) / scale); batch and
 * spatial sizes are dynamic (spatial ones multiples of the network's sizeMultiple). Outputs, same
 * layout and size: `output` (the denoised value, normalised units); for Gaussian-prior models also
 * `uncertainty` (posterior standard deviation, normalised units: multiply by scale, add no offset)
 * and `prior_mean`. Inside, the graph is channels-first; one Transpose at each end.
 */
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type * as tfl from '@tensorflow/tfjs-layers';
import { OutputError } from '../../core/errors.js';
import { VERSION } from '../../core/version.js';
import { describeNoise } from '../bayes.js';
import { loadModelFolder, MANIFEST_JSON, MODEL_ONNX, readManifest, writeFilesAtomically, type ModelManifest, type OnnxRecord, type OnnxTensorInfo } from '../io.js';
import { describeNetwork } from '../network.js';
import { GraphBuilder, IR_VERSION, OPSET, attr } from './graph.js';
import { callsInOrder, type SymbolicTensorLike } from './layerCalls.js';
import { converters, UnsupportedLayerError, type ConvertContext } from './layers.js';
import { appendPosterior, normalisedNoise } from './posterior.js';
import { encodeModel, type OnnxValueInfo } from './proto.js';

export { UnsupportedLayerError } from './layers.js';

/** The exported graph's interface and checksum, and what could not be exported as trained. */
export interface OnnxInfo {
  inputs: OnnxTensorInfo[];
  outputs: OnnxTensorInfo[];
  opset: number;
  /** Hex SHA-256 of the bytes. */
  sha256: string;
  /** Where the graph differs from `blindspot denoise` (e.g. a noise model it cannot express: prior mean exported). */
  warnings: string[];
}

export interface ExportOptions {
  /** 'all' (default): every output the model has (a prior model's uncertainty and prior mean too); 'denoised': `output` only. */
  outputs?: 'all' | 'denoised';
}

function spatialNames(dims: 2 | 3): string[] {
  return dims === 2 ? ['y', 'x'] : ['z', 'y', 'x'];
}

/** Channels-last <-> channels-first permutations. */
function toChannelsFirst(dims: 2 | 3): number[] {
  return dims === 2 ? [0, 3, 1, 2] : [0, 4, 1, 2, 3];
}
function toChannelsLast(dims: 2 | 3): number[] {
  return dims === 2 ? [0, 2, 3, 1] : [0, 2, 3, 4, 1];
}

export function sha256Hex(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/**
 * Exports `model` (as loaded from a model folder, or just trained) with its `manifest` (network,
 * normalisation, noise of a prior) to ONNX. Throws UnsupportedLayerError for a layer it has no
 * converter for.
 */
export function exportOnnx(model: tfl.LayersModel, manifest: ModelManifest, opts: ExportOptions = {}): { bytes: Uint8Array; info: OnnxInfo } {
  const dims = manifest.network.dims;
  // Sampling denoisers (DivNoising's VAE) and PN2V's prior samples weighed by a noise model compute
  // their denoised value outside the network; a graph of the network alone would give something else.
  const networkChannels = manifest.network.outputChannels ?? 1;
  if (manifest.network.kind === 'vae' || networkChannels > 2) {
    throw new UnsupportedLayerError(model.name, `a ${manifest.method} model's denoised value (${manifest.network.kind === 'vae' ? 'posterior samples of a VAE' : `an MMSE over ${networkChannels} prior samples`}) is not exported to ONNX; it runs on --engine tfjs`);
  }
  if (model.inputs.length !== 1 || model.outputs.length !== 1) throw new UnsupportedLayerError(model.name, 'the network must have one input and one output');
  const inputTensor = model.inputs[0] as unknown as SymbolicTensorLike;
  const outputTensor = model.outputs[0] as unknown as SymbolicTensorLike;
  if (inputTensor.shape.length !== dims + 2 || inputTensor.shape[dims + 1] !== 1) {
    throw new UnsupportedLayerError(model.name, `input shape [${inputTensor.shape.join(', ')}] is not ${dims}D with one channel as the manifest says`);
  }
  const g = new GraphBuilder();
  const inputName = g.reserve('input');
  const outputNames = { denoised: g.reserve('output'), uncertainty: g.reserve('uncertainty'), priorMean: g.reserve('prior_mean') };
  const inputFirst = g.op('Transpose', [inputName], 'input_channels_first', { perm: attr.ints(toChannelsFirst(dims)) });

  const calls = callsInOrder(outputTensor);
  const readers = new Map<number, number>();
  for (const call of calls) for (const t of call.inputTensors) readers.set(t.id, (readers.get(t.id) ?? 0) + 1);
  const names = new Map<number, string>();
  const ctx: ConvertContext = { g, dims, foldable: new Map(), sharedWeights: new Map() };
  for (const call of calls) {
    const layer = call.outboundLayer;
    const className = layer.getClassName();
    if (className === 'InputLayer') {
      if (call.outputTensors[0].id !== inputTensor.id) throw new UnsupportedLayerError(layer.name, 'a second input layer');
      names.set(inputTensor.id, inputFirst);
      continue;
    }
    const convert = converters[className];
    if (!convert) throw new UnsupportedLayerError(layer.name, `no converter for tfjs layer class ${className}`);
    if (call.outputTensors.length !== 1) throw new UnsupportedLayerError(layer.name, 'a layer with several outputs');
    const inputs = call.inputTensors.map((t) => {
      const n = names.get(t.id);
      if (n === undefined) throw new Error(`ONNX export: ${layer.name} reads a tensor not converted yet`);
      return n;
    });
    const soleReader = call.inputTensors.length === 1 && readers.get(call.inputTensors[0].id) === 1 && call.inputTensors[0].id !== outputTensor.id;
    const inputChannels = call.inputTensors.map((t) => t.shape[t.shape.length - 1] ?? 0);
    names.set(call.outputTensors[0].id, convert(ctx, { layer, inputs, inputChannels, soleReader }));
  }
  const network = names.get(outputTensor.id);
  if (network === undefined) throw new Error('ONNX export: the output was not converted');

  const warnings: string[] = [];
  const channels = outputTensor.shape[dims + 1];
  const last = (x: string, name: string): string => g.op('Transpose', [x], `${name}_channels_last`, { perm: attr.ints(toChannelsLast(dims)) }, name);
  const shape = ['batch', ...spatialNames(dims), 1];
  const outputs: OnnxTensorInfo[] = [];
  if (channels === 1) {
    outputs.push({ name: last(network, outputNames.denoised), shape, role: 'denoised' });
  } else if (channels === 2) {
    const noise = manifest.prior ? normalisedNoise(manifest.prior.noise, manifest.normalisation) : null;
    if (noise === null) {
      const why = manifest.prior ? `its noise model (${JSON.stringify(manifest.prior.noise)}) cannot be expressed in the graph` : 'the manifest records no noise model';
      warnings.push(`the graph's output is the prior mean, not the posterior mean 'blindspot denoise' gives: ${why}`);
      outputs.push({ name: last(g.slice(network, 1, 0, 1, 'prior_mean_only'), outputNames.denoised), shape, role: 'denoised' });
    } else {
      const tail = appendPosterior(g, network, inputFirst, noise);
      outputs.push({ name: last(tail.posteriorMean, outputNames.denoised), shape, role: 'denoised' });
      if ((opts.outputs ?? 'all') === 'all') {
        outputs.push({ name: last(tail.posteriorStd, outputNames.uncertainty), shape, role: 'uncertainty' });
        outputs.push({ name: last(tail.priorMean, outputNames.priorMean), shape, role: 'prior-mean' });
      }
    }
  } else {
    throw new UnsupportedLayerError(model.name, `${String(channels)} output channels (1, or 2 for a Gaussian prior)`);
  }

  g.fuseCausalConvolutions(outputs.map((o) => o.name));
  const inputs: OnnxTensorInfo[] = [{ name: inputName, shape, role: 'input' }];
  const valueInfo = (t: OnnxTensorInfo): OnnxValueInfo => ({ name: t.name, shape: t.shape, docString: `${t.role}, normalised units, ${dims === 2 ? 'NHWC' : 'NDHWC'}` });
  const n = manifest.normalisation;
  const metadata: Record<string, string> = {
    'blindspot.method': manifest.method,
    'blindspot.network': describeNetwork(manifest.network),
    'blindspot.layout': dims === 2 ? 'NHWC' : 'NDHWC',
    'blindspot.normalisation': JSON.stringify(n),
    ...(manifest.prior ? { 'blindspot.noise': describeNoise(manifest.prior.noise) } : {}),
  };
  const bytes = encodeModel({
    irVersion: IR_VERSION,
    opset: OPSET,
    producerName: 'blindspot',
    producerVersion: VERSION,
    docString: `${describeNetwork(manifest.network)} trained with ${manifest.method}. Input and outputs in normalised units: raw = value * ${n.scale} + ${n.offset}.`,
    metadata,
    graph: g.graph(`blindspot_${manifest.method}_${dims}d`, inputs.map(valueInfo), outputs.map(valueInfo)),
  });
  return { bytes, info: { inputs, outputs, opset: OPSET, sha256: sha256Hex(bytes), warnings } };
}

/**
 * The ONNX of a model folder: its `model.onnx` when the manifest records one whose checksum
 * matches, else exported in memory from the tfjs weights. Never writes into the folder (an input).
 */
export async function onnxForModelFolder(dir: string): Promise<{ bytes: Uint8Array; info: OnnxInfo; source: 'file' | 'exported' }> {
  const manifest = await readManifest(dir);
  const record = manifest.onnx;
  const warnings: string[] = [];
  if (record) {
    const file = path.join(dir, path.basename(record.file));
    let bytes: Uint8Array | null = null;
    try {
      bytes = new Uint8Array(await fs.readFile(file));
    } catch (err) {
      warnings.push(`${file} cannot be read (${(err as Error).message}); exported from the tfjs weights instead`);
    }
    if (bytes !== null) {
      if (sha256Hex(bytes) === record.sha256) {
        return { bytes, info: { inputs: record.inputs, outputs: record.outputs, opset: record.opset, sha256: record.sha256, warnings: [] }, source: 'file' };
      }
      warnings.push(`${file} does not match the sha256 in ${MANIFEST_JSON}; exported from the tfjs weights instead`);
    }
  }
  const { model } = await loadModelFolder(dir);
  try {
    const exported = exportOnnx(model, manifest);
    return { bytes: exported.bytes, info: { ...exported.info, warnings: [...warnings, ...exported.info.warnings] }, source: 'exported' };
  } finally {
    model.dispose();
  }
}

/**
 * Exports a model folder's network and writes it into the folder as `model.onnx`, with its record in
 * the manifest (the end of `train`, and `blindspot export` for folders written before ONNX). The
 * file is written first, then the manifest that names it, each atomically.
 */
export async function writeOnnxToModelFolder(dir: string): Promise<{ manifest: ModelManifest; info: OnnxInfo }> {
  const { model, manifest } = await loadModelFolder(dir);
  let exported: { bytes: Uint8Array; info: OnnxInfo };
  try {
    exported = exportOnnx(model, manifest);
  } finally {
    model.dispose();
  }
  const { inputs, outputs, opset, sha256 } = exported.info;
  const record: OnnxRecord = { file: MODEL_ONNX, inputs, outputs, opset, sha256 };
  const updated: ModelManifest = { ...manifest, onnx: record };
  try {
    await writeFilesAtomically(dir, { [MODEL_ONNX]: exported.bytes });
    await writeFilesAtomically(dir, { [MANIFEST_JSON]: JSON.stringify(updated, null, 2) + '\n' });
  } catch (err) {
    throw new OutputError(path.join(dir, MODEL_ONNX), `cannot write it into the model folder: ${(err as Error).message}`, { cause: err });
  }
  return { manifest: updated, info: exported.info };
}

/**
 * The end of `train`: `model.onnx` into the finished folder. An export that fails is reported
 * through `warn` and leaves the folder as it was (the tfjs model stands; `blindspot export` can try
 * again), never a failed training run. Returns the manifest as the folder now holds it.
 */
export async function writeOnnxAfterTraining(dir: string, manifest: ModelManifest, warn: (message: string) => void): Promise<ModelManifest> {
  try {
    const written = await writeOnnxToModelFolder(dir);
    for (const w of written.info.warnings) warn(`model.onnx: ${w}`);
    return written.manifest;
  } catch (err) {
    warn(`model.onnx was not written (${(err as Error).message}); the tfjs model is complete, 'blindspot export ${dir}' retries`);
    return manifest;
  }
}
