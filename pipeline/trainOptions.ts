/**
 * What train takes and reports: its inputs (images, volumes or streamed chunked sources, with their
 * targets for paired methods), options and events. pipeline/train.ts re-exports them.
 */
import type { LearningRateSchedule } from './learningRateSchedule.js';
import type { ClassicalComparison } from './classicalComparison.js';
import type { GmmNoiseModel } from '../noise/gmm.js';
import type { Volume } from '../core/volume.js';
import { type ReplacementStrategy } from '../models/masking.js';
import { type NoiseSpec } from '../models/bayes.js';
import type { StructuringElement } from '../models/structMask.js';
import type { MethodEvent, NetworkOverrides } from '../methods/method.js';
import { type MethodName } from '../models/io.js';
import { type BackgroundFilter, type RegionEvent } from '../operators/sampleRegions.js';
import type { ChunkedArrayReader } from '../storage/chunked.js';

export interface NamedVolume {
  volume: Volume;
  name: string;
  /** n2n / care: the paired target image (second noisy shot, or clean), same shape as `volume`. */
  target?: Volume;
  /** Its file name, for messages. */
  targetName?: string;
}

/** A chunked array to train from without reading it whole (Zarr, TIFF stack, frame folder, S3). */
export interface NamedSource {
  reader: ChunkedArrayReader;
  name: string;
  /**
   * n2n / care: the paired target array (second noisy acquisition, or clean), exactly the shape of
   * `reader` (chunk shapes may differ). Or give `targetSources` and let them pair by name.
   */
  target?: ChunkedArrayReader;
  /** Its name (path or URL), for messages and the manifest. */
  targetName?: string;
}

/** Settings of streaming training (with `sources`); every one has a default. */
export interface StreamingTrainSettings {
  /**
   * Memory for the data side of training (chunk cache, batch queue, validation patches, statistics
   * sketch); what streamingTrainBufferBytes does not claim goes to the cache. The network's own
   * tensors (weights, optimiser state, activations) come on top: they depend on the model, not the data.
   */
  maxMemoryBytes?: number;
  /** Bytes of decoded chunks the shared cache may hold; default from maxMemoryBytes, else max(256 MiB, one step's regions). */
  cacheBytes?: number;
  /** Patches cut from each region (more: fewer chunk reads per patch, less variety per batch); default min(batch, 8). */
  patchesPerRegion?: number;
  /** Region size in chunks per axis; default defaultRegionChunks (two patches per axis, shrunk for big or thin chunks). */
  regionChunks?: number[];
  /** Chunk reads in flight at once; default 4. */
  readConcurrency?: number;
  /** Skip patches whose mean (or percentile) is below a raw intensity threshold. */
  background?: BackgroundFilter;
  /** Values sampled (as whole chunks) for the normalisation statistics; default 2^24. */
  normalisationSampleValues?: number;
  /** Called for every region fetched (training and validation), e.g. to count chunk reads. */
  onRegion?: (event: RegionEvent) => void;
}

export interface TrainOptions {
  /** Image files (already expanded), or give `volumes` directly, or chunked `sources` (streaming). */
  inputs?: string[];
  volumes?: NamedVolume[];
  /**
   * Streaming training: patches come from random chunk-aligned regions read through a byte-bounded
   * chunk cache, statistics from a sample of chunks; nothing holds a whole volume. Exclusive with
   * `inputs` / `volumes`.
   */
  sources?: NamedSource[];
  /**
   * n2n / care with `sources`: the target arrays, paired with `sources` by sorted name exactly as
   * `targets` pair with `inputs` (same count, same shapes); or set each source's `target` instead.
   */
  targetSources?: NamedSource[];
  streaming?: StreamingTrainSettings;
  /**
   * Batches the patch producer may run ahead of the model (explicit backpressure); default 2.
   * Memory held by the queue: (aheadBatches + 1) batches of inputs, targets and masks.
   */
  aheadBatches?: number;
  /** Called when a batch is ready for the model, before it is trained on (progress, tests). */
  onBatchReady?: (step: number) => void;
  /** Model folder to create. */
  out: string;
  method?: MethodName;
  /**
   * n2n / care: target image files (second noisy shots, or clean images), paired with `inputs` by
   * sorted file name (same count, same shapes). With `volumes`, set each one's `target` instead.
   */
  targets?: string[];
  /** structn2v: `horizontal:N`, `vertical:N`, `depth:N` or a mask file (models/structMask.ts), or an element. */
  structMask?: string | StructuringElement;
  /** noise2self / noise2info: side k of the grid of masking phases (default 4). */
  grid?: number;
  steps?: number;
  batchSize?: number;
  /** YX or ZYX in pixels/voxels; default 64x64 (2D) or 32x64x64 (3D). */
  patchShape?: number[];
  seed?: number;
  learningRate?: number;
  /**
   * 'plateau' (default): the learning rate halves after `patience` validations without improvement.
   * 'constant': it never changes (the PyTorch reference's recipe, bench:parity).
   * 'cosine': it anneals from the base rate to 1% of it over the run, by steps or by the time budget,
   * whichever ends it first (pipeline/learningRateSchedule.ts).
   */
  learningRateSchedule?: LearningRateSchedule;
  /** Adam's epsilon; default the backend's (1e-7 on float32 backends, as tf.train.adam). PyTorch's is 1e-8. */
  adamEpsilon?: number;
  maskFraction?: number;
  strategy?: ReplacementStrategy;
  /** Half-width in pixels of the window a masked pixel's replacement comes from (default 2: a 5x5 window; --mask-radius). */
  maskRadius?: number;
  loss?: 'mse' | 'mae';
  /**
   * Train a Gaussian prior (mean and variance of the clean value, Laine et al.) by the likelihood of
   * the noisy value under this noise model, instead of a point estimate; denoise then gives the
   * posterior mean (models/bayes.ts).
   */
  prior?: NoiseSpec | 'learned' | 'nlf';
  /**
   * The Gaussian mixture noise model (noise/gmm.ts) behind a --prior file, for the methods whose loss
   * is the noise likelihood (Method.likelihood: pn2v, divnoising), which use it whole; `prior` then
   * holds its Poisson-Gaussian summary. Other methods use the summary only.
   */
  noiseModel?: GmmNoiseModel;
  /**
   * Fit each training image's noise-level function in worker threads while training runs and store
   * them in the model (default true for in-memory images; streamed sources are not fitted).
   */
  noiseFits?: boolean;
  /**
   * After a run on one in-memory image or stack, score the trained model and the calibrated
   * classical filter (nlm) by the J-invariant loss on the held-out slab (pipeline/classicalComparison.ts)
   * and report it ('classical-comparison'); default true. Streamed sources are not checked.
   */
  classicalCheck?: boolean;
  /** Network shape overrides; which apply depends on the method's network (U-Net, laine19, D-BSN). */
  network?: NetworkOverrides;
  /**
   * Size of the default laine19 / D-BSN network: 'paper' (the published one) or 'small' (one that
   * trains at a useful pace on a CPU); default 'paper' on a GPU (tensorflow-gpu, webgpu on a hardware
   * adapter), else 'small'.
   */
  networkSize?: 'paper' | 'small';
  normalisation?: 'meanstd' | 'percentile';
  augment?: boolean;
  /** Fraction of the data held out for validation (images, or a slab of a single image). */
  valFraction?: number;
  valPatches?: number;
  validateEvery?: number;
  /**
   * Wall-clock training budget in seconds, validation included (a resumed run counts what it spent
   * before): the run ends, finished and validated, at the first step past it, or at `steps` if that
   * comes first. Without `steps` the step count is unbounded and validation runs every 100 steps
   * (unless `validateEvery` says otherwise).
   */
  timeBudgetSeconds?: number;
  /** Validations without improvement before the learning rate is halved. */
  patience?: number;
  resume?: boolean;
  overwrite?: boolean;
  backend?: { name: string; threads: number; gpu?: boolean };
  /**
   * What computes each step's loss and gradients: 'onnx' (ONNX Runtime's CPU kernels on the network's
   * written-out backward graph, engines/onnxGradients.ts, with backend.threads threads: 2D and 3D U-Nets of
   * the methods whose loss is, or rewrites to, the plain masked loss, no prior), 'tfjs' (the backend's own autodiff),
   * or 'auto' (default): onnx where the run qualifies and the tfjs backend computes on the CPU, else
   * tfjs (pipeline/trainEngine.ts). tfjs keeps the weights, Adam and checkpoints either way.
   */
  trainEngine?: TrainEngineChoice;
  /** Interrupt: the run stops after the current step with a checkpoint, resumable with `resume`. */
  signal?: AbortSignal;
  onEvent?: (event: TrainEvent) => void;
  command?: string[];
}

export type TrainEngineChoice = 'auto' | 'tfjs' | 'onnx';
export const TRAIN_ENGINE_CHOICES: readonly TrainEngineChoice[] = ['auto', 'tfjs', 'onnx'];

export type TrainEvent =
  | {
      type: 'normalisation';
      mode: 'meanstd' | 'percentile';
      offset: number;
      scale: number;
      chunksRead: number;
      chunksTotal: number;
      valuesSeen: number;
      rankErrorBound: number;
    }
  | {
      type: 'start';
      steps: number;
      firstStep: number;
      dims: 2 | 3;
      /** The training method and a one-line description of its network (models/network.ts describeNetwork). */
      method: MethodName;
      network: string;
      patchShape: number[];
      batchSize: number;
      trainVolumes: number;
      valVolumes: number;
      resumed: boolean;
      /** The wall-clock budget (timeBudgetSeconds), when there is one; `steps` is then only a cap. */
      budgetSeconds?: number;
      /** What computes the gradients: the engine's line, or tfjs and (under 'auto') why. */
      trainEngine: string;
    }
  | {
      type: 'step';
      step: number;
      steps: number;
      loss: number;
      learningRate: number;
      stepsPerSecond: number;
      lastValLoss: number | null;
      /** Wall-clock seconds of training so far, and the budget when there is one. */
      seconds: number;
      budgetSeconds?: number;
    }
  | { type: 'validation'; step: number; valLoss: number; best: boolean; learningRate: number }
  | { type: 'checkpoint'; step: number }
  | { type: 'warning'; message: string }
  | MethodEvent
  | { type: 'interrupted'; step: number }
  | { type: 'time-budget-spent'; step: number; seconds: number; budgetSeconds: number }
  | ({ type: 'classical-comparison' } & ClassicalComparison)
  | { type: 'done'; steps: number; bestStep: number; bestValLoss: number | null; seconds: number };
