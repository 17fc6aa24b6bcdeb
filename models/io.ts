/**
 * A trained model is a folder: TensorFlow.js `model.json` + `weights.bin` (loadable by any tfjs
 * runtime, including tfjs-node and the browser) and `blindspot.json` (method, network, normalisation,
 * patch size, backend, training history). Everything is written to a temporary name and renamed,
 * so a crash never leaves a folder that looks complete but is not.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';
import { InputError } from '../core/errors.js';
import type { NetworkConfig } from './network.js';
import type { Normalisation } from './normalise.js';
import type { MaskOptions } from './masking.js';
// Registers the custom layers (max-blur-pool, 3D upsampling) so saved topologies deserialise.
import './layers.js';
// And those of the architectural blind-spot networks (laine19, D-BSN).
import './blindspotLayers.js';
import type { NoiseSpec } from './bayes.js';
import type { NlfRecord } from '../noise/nlf.js';
import type { LikelihoodNoise } from '../noise/likelihood.js';

export const MODEL_JSON = 'model.json';
export const WEIGHTS_BIN = 'weights.bin';
export const MANIFEST_JSON = 'blindspot.json';
/** The network as ONNX (models/onnx/export.ts), beside the tfjs weights; recorded in the manifest's `onnx`. */
export const MODEL_ONNX = 'model.onnx';

/** A training method's name: a key of methods/registry.ts (a folder may name one this build does not know). */
export type MethodName = string;

/** Where a Gaussian-prior model's noise model came from. */
export type PriorSource = 'given' | 'learned' | 'nlf';

export interface TrainingRecord {
  step: number;
  loss: number;
  valLoss?: number;
  learningRate: number;
  /** Seconds since the run started (summed over resumed segments). */
  seconds: number;
  /** noise2info: sigma_loss after this validation's update (normalised units). */
  noise2infoSigma?: number;
}

/** Settings a method trained with, beyond the network (recorded for provenance and resume). */
export interface MethodSettings {
  /** structn2v: the structuring element (shape per axis, 0/1 values in C order). */
  structMask?: { spec: string; shape: number[]; values: number[] };
  /** noise2self, noise2info: side k of the k^dims grid of masking phases. */
  grid?: number;
  /** noise2info: sigma_loss (normalised units) after the last update, and every update's estimate. */
  noise2info?: { sigma: number; estimates: { step: number; estimate: number; sigma: number }[] };
  /** n2n, care: the target file of every training input, in the inputs' order. */
  targets?: string[];
}

/** A distilled student's teacher (pipeline/distill.ts): which model it learned from, and on what. */
export interface DistillationRecord {
  teacher: {
    /** The teacher's model folder (absolute path at distillation time). */
    path: string;
    method: MethodName;
    /** One line: models/network.ts describeNetwork. */
    network: string;
    /** sha256 of the teacher's weights.bin. */
    weightsSha256: string;
  };
  /** What the student's targets on the inputs were. */
  targets: string;
  /** --clean: the clean images, and the noise model (input units) that noised them. */
  clean?: string[];
  cleanNoise?: NoiseSpec;
}

/** What `blindspot.json` holds: everything needed to use the model, and how it came to be. */
export interface ModelManifest {
  format: 'blindspot-model';
  formatVersion: 1;
  method: MethodName;
  /** Old manifests have no `kind`: a U-Net. */
  network: NetworkConfig;
  normalisation: Normalisation;
  /** Training patch size, YX or ZYX, in pixels/voxels. */
  patchShape: number[];
  /** Only the stratified-masking methods (n2v, n2v2, structn2v) record it; older manifests have it for every method. */
  masking?: MaskOptions;
  /**
   * 'prior-nll': the network predicts a Gaussian prior (models/bayes.ts), trained by its likelihood;
   * or the name of a method's own loss (Method.ownLoss: D-BSN's, Noise2Info's L_in + 2 sigma L_ex).
   */
  loss: string;
  /**
   * Present for 2-channel models (Gaussian prior, D-BSN): the noise model that turns the prediction
   * into a posterior, raw intensity units; `source`: given on the command line, learned jointly
   * with the network, or the training images' noise-level fits (absent in older models: given).
   */
  prior?: { noise: NoiseSpec; source?: PriorSource };
  /** Likelihood methods (pn2v, divnoising): the noise model p(x | s) of their loss and denoiser, input units. */
  noiseModel?: LikelihoodNoise;
  methodSettings?: MethodSettings;
  /** Noise-level function of every training image (fitted in worker threads while training ran). */
  noise?: NlfRecord[];
  /**
   * The network's mean offset on the validation patches (input intensity units), measured after
   * training and already taken out of the output layer's bias (absent: not corrected; prior models).
   */
  outputOffsetRemoved?: number;
  /** Distilled students (`blindspot distill`, method care on the teacher's outputs): the teacher. */
  distillation?: DistillationRecord;
  training: {
    steps: number;
    stepsDone: number;
    batchSize: number;
    seed: number;
    learningRate: number;
    /** Present when not the default ('plateau'): 'constant' never changed the learning rate, 'cosine' annealed it over the run (steps or time budget). */
    learningRateSchedule?: 'constant' | 'cosine';
    /** Present when the method validates by a loss of its own (Method.validation), not its training loss: 'j-invariant'. */
    validationLoss?: string;
    /** Adam's epsilon, present when given (absent: the backend's, 1e-7 on float32 backends). */
    adamEpsilon?: number;
    backend: string;
    threads: number;
    /** Present when not tfjs: what computed the gradients ('onnx': ONNX Runtime, engines/onnxGradients.ts). */
    trainEngine?: 'onnx';
    inputs: string[];
    validationInputs: string[];
    bestStep: number;
    bestValLoss: number | null;
    wallSeconds: number;
    /** The wall-clock budget the run was given (train --time-budget), when it had one. */
    timeBudgetSeconds?: number;
    finished: boolean;
  };
  history: TrainingRecord[];
  createdBy: { name: 'blindspot'; version: string; command: string[] };
  /** The folder's `model.onnx` (absent in folders written before it existed: `blindspot export` adds it). */
  onnx?: OnnxRecord;
}

/** A graph input or output of an exported network: NHWC / NDHWC float32, string dimensions dynamic. */
export interface OnnxTensorInfo {
  name: string;
  shape: (number | string)[];
  /** What it holds (normalised intensity units): the network input, the denoised value, the posterior std, the prior mean. */
  role: 'input' | 'denoised' | 'uncertainty' | 'prior-mean';
}

/** What the manifest records of `model.onnx`: its interface and a checksum that ties it to these weights. */
export interface OnnxRecord {
  file: string;
  inputs: OnnxTensorInfo[];
  outputs: OnnxTensorInfo[];
  opset: number;
  /** Hex SHA-256 of the file's bytes. */
  sha256: string;
}

/** Serialises a layers model to the tfjs model.json + weights.bin pair, in memory. */
export async function modelToFiles(model: tfl.LayersModel): Promise<{ modelJson: string; weights: Uint8Array }> {
  let captured: tf.io.ModelArtifacts | undefined;
  await model.save(
    tf.io.withSaveHandler(async (artifacts) => {
      captured = artifacts;
      return { modelArtifactsInfo: { dateSaved: new Date(), modelTopologyType: 'JSON' } };
    }),
  );
  if (!captured) throw new Error('model.save produced no artifacts');
  const weightData = captured.weightData ?? new ArrayBuffer(0);
  const weights = new Uint8Array(tf.io.CompositeArrayBuffer.join(weightData));
  const modelJson = JSON.stringify({
    modelTopology: captured.modelTopology,
    format: 'layers-model',
    generatedBy: captured.generatedBy,
    convertedBy: null,
    weightsManifest: [{ paths: [WEIGHTS_BIN], weights: captured.weightSpecs ?? [] }],
  });
  return { modelJson, weights };
}

export async function modelFromFiles(modelJson: string, weights: Uint8Array, name: string): Promise<tfl.LayersModel> {
  let parsed: { modelTopology?: unknown; weightsManifest?: Array<{ weights: tf.io.WeightsManifestEntry[] }> };
  try {
    parsed = JSON.parse(modelJson);
  } catch (err) {
    throw new InputError(name, `model.json is not valid JSON (${(err as Error).message})`);
  }
  if (!parsed.modelTopology || !Array.isArray(parsed.weightsManifest)) {
    throw new InputError(name, 'model.json has no modelTopology/weightsManifest: not a TensorFlow.js layers model');
  }
  const weightSpecs = parsed.weightsManifest.flatMap((g) => g.weights);
  const buffer = weights.buffer.slice(weights.byteOffset, weights.byteOffset + weights.byteLength) as ArrayBuffer;
  try {
    return await tfl.loadLayersModel(
      tf.io.fromMemory({ modelTopology: parsed.modelTopology as tf.io.ModelArtifacts['modelTopology'], weightSpecs, weightData: buffer }),
    );
  } catch (err) {
    throw new InputError(name, `cannot load the network: ${(err as Error).message}`, { cause: err });
  }
}

/** Writes files into `dir` atomically as a set: each file goes to a temp name first, then all are renamed. */
export async function writeFilesAtomically(dir: string, files: Record<string, string | Uint8Array>): Promise<void> {
  await fs.mkdir(dir, { recursive: true });
  const suffix = `.tmp-${process.pid}-${Date.now()}`;
  const names = Object.keys(files);
  for (const name of names) await fs.writeFile(path.join(dir, name + suffix), files[name]);
  for (const name of names) await fs.rename(path.join(dir, name + suffix), path.join(dir, name));
}

/** Saves network + manifest. The manifest is renamed last: its presence marks the folder complete. */
export async function saveModelFolder(dir: string, model: tfl.LayersModel, manifest: ModelManifest): Promise<void> {
  const { modelJson, weights } = await modelToFiles(model);
  await writeFilesAtomically(dir, { [MODEL_JSON]: modelJson, [WEIGHTS_BIN]: weights });
  await writeFilesAtomically(dir, { [MANIFEST_JSON]: JSON.stringify(manifest, null, 2) + '\n' });
}

export async function readManifest(dir: string): Promise<ModelManifest> {
  const file = path.join(dir, MANIFEST_JSON);
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch {
    throw new InputError(dir, `not a blindspot model folder (no ${MANIFEST_JSON}); train one with 'blindspot train'`);
  }
  let manifest: ModelManifest;
  try {
    manifest = JSON.parse(text) as ModelManifest;
  } catch (err) {
    throw new InputError(file, `not valid JSON (${(err as Error).message})`);
  }
  if (manifest.format !== 'blindspot-model') throw new InputError(file, 'not a blindspot model manifest');
  if (manifest.formatVersion !== 1) {
    throw new InputError(file, `model format version ${String(manifest.formatVersion)} is not supported by this blindspot (expects 1)`);
  }
  return manifest;
}

export async function loadModelFolder(dir: string): Promise<{ model: tfl.LayersModel; manifest: ModelManifest }> {
  const manifest = await readManifest(dir);
  let modelJson: string;
  let weights: Uint8Array;
  try {
    modelJson = await fs.readFile(path.join(dir, MODEL_JSON), 'utf8');
    weights = new Uint8Array(await fs.readFile(path.join(dir, WEIGHTS_BIN)));
  } catch (err) {
    throw new InputError(dir, `model folder is incomplete: ${(err as Error).message}`);
  }
  const model = await modelFromFiles(modelJson, weights, path.join(dir, MODEL_JSON));
  return { model, manifest };
}
