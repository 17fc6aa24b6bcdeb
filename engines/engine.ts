/**
 * The inference engine: what runs a trained network on batches of normalised tiles. Chosen once
 * per run (engines/select.ts) and handed to the tiling and streaming operators, which name no
 * engine: ONNX Runtime (engines/onnxRuntime.ts) or TensorFlow.js (engines/tfjs.ts).
 */
import type { TileSpec } from '../operators/tileGrid.js';
import { BlindspotError, ExitCode } from '../core/errors.js';

export type EngineName = 'onnx' | 'tfjs';
export type EngineChoice = 'auto' | EngineName;
export const ENGINE_CHOICES: readonly EngineChoice[] = ['auto', 'onnx', 'tfjs'];

/** ONNX Runtime execution providers we select (the tfjs engine runs on the process's tfjs backend). */
export type DeviceName = 'cpu' | 'cuda' | 'tensorrt';
export type DeviceChoice = 'auto' | DeviceName;
export const DEVICE_CHOICES: readonly DeviceChoice[] = ['auto', 'cpu', 'cuda', 'tensorrt'];

export interface InferenceEngine {
  readonly name: EngineName;
  /** Where it computes: the ONNX Runtime execution provider ('cpu', 'cuda', 'tensorrt') or the tfjs backend ('wasm', 'cpu', 'tensorflow'). */
  readonly provider: string;
  /** CPU threads it computes with (ONNX Runtime: intra-op threads). */
  readonly threads: number;
  /** One line for the log: engine, provider, threads, versions, and why a fallback happened. */
  describe(): string;
  /**
   * Runs the network on `batch` (float32, C order) of shape [N, Y, X, 1] or [N, Z, Y, X, 1]
   * (normalised units) and returns the one-channel output of the same shape. The input is not
   * modified; the output is a fresh array the caller owns. `tiles`, where the caller knows them, are
   * the batch's tiles in order: a sampling denoiser (DivNoising) seeds each from its position.
   */
  predict(batch: Float32Array, shape: readonly number[], tiles?: readonly TileSpec[]): Promise<Float32Array>;
  /** Frees the session or model; the engine is unusable afterwards. */
  dispose(): Promise<void>;
}

/** Tells an engine from a bare tfjs model or function (both also have a `predict`). */
export function isInferenceEngine(x: unknown): x is InferenceEngine {
  return typeof x === 'object' && x !== null && typeof (x as InferenceEngine).describe === 'function' && typeof (x as InferenceEngine).predict === 'function';
}

/** An explicitly requested engine or device that cannot be loaded here (exit 1, never a silent fallback). */
export class EngineUnavailableError extends BlindspotError {
  readonly requested: string;
  /** Why, starting with the package or library concerned. */
  readonly reason: string;
  constructor(requested: string, reason: string, options?: { cause?: unknown }) {
    super(`${requested} is not available: ${reason}`, ExitCode.failure, options);
    this.requested = requested;
    this.reason = reason;
  }
}

/** Checks an engine's output against the shape it was given (a fully convolutional one-channel network keeps it). */
export function assertSameShape(engine: string, inShape: readonly number[], outShape: readonly number[], outLength: number): void {
  const expected = inShape.reduce((a, b) => a * b, 1);
  if (outShape.join() !== inShape.join() || outLength !== expected) {
    throw new Error(
      `${engine}: the model maps [${inShape.join(', ')}] to [${outShape.join(', ')}]; a fully convolutional one-channel model keeps the shape`,
    );
  }
}

/** One training batch as the trainer hands it to a gradient engine (NHWC / NDHWC, one channel, normalised units). */
export interface GradientBatch {
  shape: readonly number[];
  inputs: Float32Array;
  targets: Float32Array;
  masks: Float32Array;
}

/**
 * What computes a training step's loss and gradients when not tfjs itself: given the network's
 * current weights (model.trainableWeights order and tfjs layout) and its state (model.nonTrainableWeights:
 * batch norm's moving statistics), the batch's masked loss, its gradient per weight (same order and
 * shapes) and the state after the batch. The optimiser, the weights and the checkpoints stay tfjs':
 * only the arithmetic moves (engines/onnxGradients.ts).
 */
export interface GradientEngine {
  /** One line for the log: engine, provider, threads. */
  describe(): string;
  /** `extraGradients`: those of TrainStepsOptions.extraVariables (a learned noise level), in their order, where the loss has them. */
  gradients(batch: GradientBatch, weights: readonly Float32Array[], state: readonly Float32Array[]): Promise<{ loss: number; gradients: Float32Array[]; state: Float32Array[]; extraGradients?: Float32Array[] }>;
  /**
   * The network's output on `inputs` in training mode (batch norm on the batch's own statistics)
   * and the state after it, with no gradient: for losses that make their target from it. `noise`:
   * what its sampling layers drew (a VAE's eps; empty for most networks), for `vjp` on the same sample.
   */
  forward(inputs: Float32Array, shape: readonly number[], weights: readonly Float32Array[], state: readonly Float32Array[]): Promise<{ prediction: Float32Array; state: Float32Array[]; noise: Float32Array[] }>;
  /**
   * The gradient per weight of a loss computed elsewhere from the network's output on `inputs`, given
   * that loss's gradient with respect to the output (`dPrediction`, the output's shape: any number of
   * channels), and the state after the pass. Engines opened for a loss of their own may not have it.
   * `noise`: the forward pass's draws, where the network samples (required there).
   */
  vjp?(inputs: Float32Array, shape: readonly number[], dPrediction: Float32Array, weights: readonly Float32Array[], state: readonly Float32Array[], noise?: readonly Float32Array[]): Promise<{ gradients: Float32Array[]; state: Float32Array[] }>;
  dispose(): Promise<void>;
}
