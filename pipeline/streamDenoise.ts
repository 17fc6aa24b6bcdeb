/**
 * Streaming denoise of a path or URL: opens the model and the input (any chunked array, local or
 * S3), plans memory, creates or reopens the OME-Zarr output, runs the chunk stream
 * (pipeline/chunkStream.ts denoiseChunked) with its journal (resume) and shard, and builds the
 * pyramid when every block is stored. The pieces live in their own modules and are re-exported
 * here: the memory plan (streamMemory.ts), the run journal (runJournal.ts), shard completion
 * (shardRuns.ts), output-location checks (outputLocation.ts) and the stream itself (chunkStream.ts).
 */
import { InputError, OutputError } from '../core/errors.js';
import type { Normalisation } from '../models/normalise.js';
import { type EngineRequest, engineEvent, openModelEngine } from '../engines/modelEngine.js';
import type { InferenceEngine } from '../engines/engine.js';
import type { ByteStore } from '../storage/byteStore.js';
import { fitChunkedInputNoise, inputNoiseRecord } from '../noise/inputNoise.js';
import { type ArrayInfo, type ChunkedArrayReader } from '../storage/chunked.js';
import type * as tfl from '@tensorflow/tfjs-layers';
import { estimateBytesPerVoxel } from './predict.js';
import { VERSION } from '../core/version.js';
import { type ModelManifest, loadModelFolder } from '../models/io.js';
import { denoisingTileModel, type DenoiseOutput } from '../methods/denoiser.js';
import type { SamplingOptions } from '../methods/method.js';
import { createOmeZarr, openOmeZarrWriter, type OmeZarrWriter } from '../storage/ome.js';
import { openByteStore, openChunkedSource } from '../storage/open.js';
import type { S3Settings } from '../storage/s3.js';
import { networkGeometry } from '../models/network.js';
import { type ShardSpec } from './shard.js';
import { RunHistoryRecorder } from './runHistory.js';
import { type StreamGeometry, type StreamMemoryPlan, planStreamMemory } from './streamMemory.js';
import { runFingerprint, modelFolderHash } from './runJournal.js';
import { assertOutputIsNotInput } from './outputLocation.js';
import { type StreamDenoiseEvent, type DenoiseChunkedResult, denoiseChunked } from './chunkStream.js';

export { RUNTIME_BYTES, activationCapForBackend, chooseCoreShape, parseByteSize, planStreamMemory } from './streamMemory.js';
export type { PlanStreamOptions, StreamGeometry, StreamMemoryPlan } from './streamMemory.js';
export { JOURNAL_PREFIX, RunJournal, modelFolderHash, runFingerprint } from './runJournal.js';
export { assertOutputIsNotInput } from './outputLocation.js';
export { denoiseChunked } from './chunkStream.js';
export type { DenoiseChunkedOptions, DenoiseChunkedResult, StreamDenoiseEvent } from './chunkStream.js';

export interface DenoiseUrlOptions {
  input: string;
  out: string;
  modelDir: string;
  maxMemoryBytes: number;
  s3?: S3Settings;
  ngffVersion?: '0.4' | '0.5';
  channel?: number;
  time?: number;
  resume?: boolean;
  tta?: boolean;
  /** Output sample type: float32 (default) or the input's, rounded and clipped. */
  outputType?: 'float32' | 'input';
  /** Gaussian-prior models: the posterior mean ('denoised', default), its standard deviation, or the prior mean. */
  output?: DenoiseOutput;
  /**
   * Sampling methods (divnoising): samples per block for the MMSE / uncertainty (default
   * STREAM_DEFAULT_SAMPLES, fewer than in memory: every block pays them) and which one 'sample' writes.
   * Each sample's noise is a function of the seed and the position in the image, so resumed and
   * sharded runs write the same bytes.
   */
  sampling?: SamplingOptions;
  /** Output chunk (= tile core) shape, multiples of the pooling size; default chosen from maxMemoryBytes. */
  outputChunks?: number[];
  /** Pyramid levels below level 0 (default: the writer's choice). */
  pyramidLevels?: number;
  /**
   * The command line, recorded as provenance. Leave out what differs between runs of one output
   * (--resume, --shard): shards must write identical metadata, and a resumed run the same as before.
   */
  command?: string[];
  /** Compute only this shard's blocks (pipeline/shard.ts); implies resume. */
  shard?: ShardSpec;
  /** Inference engine and device (engines/select.ts); default auto. */
  engine?: EngineRequest;
  /**
   * Record per-chunk throughput, ETA, fetches and memory in the output (pipeline/runHistory.ts), for
   * `blindspot report`; the CLI always does. Named by the backend, when given.
   */
  history?: { backend?: string };
  signal?: AbortSignal;
  onEvent?: (event: StreamDenoiseEvent | { type: 'model'; manifest: ModelManifest } | ReturnType<typeof engineEvent> | { type: 'pyramid' }) => void;
}

/** Samples per block when streaming a sampling method's MMSE and none is given. */
export const STREAM_DEFAULT_SAMPLES = 20;

/** A display window for the output known before any voxel is denoised: the model's normalisation range. */
function displayWindow(n: Normalisation): { start: number; end: number; min: number; max: number } {
  const low = n.mode === 'percentile' ? n.offset : n.offset - 3 * n.scale;
  const high = n.mode === 'percentile' ? n.offset + n.scale : n.offset + 3 * n.scale;
  return { start: low, end: high, min: Math.min(low, 0), max: high };
}

/** Everything a URL-level run needs before it writes: model, input, geometry and the memory plan. */
export interface PreparedDenoise {
  manifest: ModelManifest;
  modelHash: string;
  model: tfl.LayersModel;
  /** What predicts: the engine opened for this model and output. */
  tileModel: InferenceEngine;
  input: ChunkedArrayReader;
  geometry: StreamGeometry;
  modelWeightBytes: number;
  bytesPerVoxel: number;
  /** The plan for a new output (an existing output's chunks win over its core shape). */
  memory: StreamMemoryPlan;
  output: DenoiseOutput;
  dtype: ArrayInfo['dtype'];
  close(): Promise<void>;
}

/** Loads the model and opens the input of `opts`, checks they fit together, and plans memory. */
export async function prepareDenoise(opts: Omit<DenoiseUrlOptions, 'out'>): Promise<PreparedDenoise> {
  const { model, manifest } = await loadModelFolder(opts.modelDir);
  let input: ChunkedArrayReader | null = null;
  try {
    const modelHash = await modelFolderHash(opts.modelDir);
    opts.onEvent?.({ type: 'model', manifest });
    const output = opts.output ?? 'denoised';
    const sampling = opts.sampling ?? { samples: STREAM_DEFAULT_SAMPLES, seed: 1 };
    // Fails early (before the input is opened) for --uncertainty / --prior-mean on a model without a prior.
    denoisingTileModel(model, manifest, output, sampling);
    input = await openChunkedSource(opts.input, { channel: opts.channel, time: opts.time, s3: opts.s3 });
    const dims = input.info.shape.length;
    if (dims !== manifest.network.dims) {
      throw new InputError(opts.input, `is ${dims}D but the model ${opts.modelDir} was trained on ${manifest.network.dims}D data`);
    }
    const geometry = networkGeometry(manifest.network);
    const modelWeightBytes = model.getWeights().reduce((n, w) => n + w.size * 4, 0);
    const bytesPerVoxel = estimateBytesPerVoxel(model, dims as 2 | 3, geometry.sizeMultiple);
    const dtype = opts.outputType === 'input' && output !== 'uncertainty' ? input.info.dtype : 'float32';
    const memory = planStreamMemory({
      maxMemoryBytes: opts.maxMemoryBytes,
      shape: input.info.shape,
      inputChunks: input.info.chunks,
      ...geometry,
      bytesPerVoxel,
      modelWeightBytes,
      tta: opts.tta,
      coreShape: opts.outputChunks,
    });
    const tileModel = await openModelEngine(opts.engine ?? {}, { modelDir: opts.modelDir, model, manifest, output, sampling });
    opts.onEvent?.(engineEvent(tileModel));
    const opened = input;
    return {
      manifest,
      modelHash,
      model,
      tileModel,
      input,
      geometry: { sizeMultiple: geometry.sizeMultiple, receptiveRadius: geometry.receptiveRadius },
      modelWeightBytes,
      bytesPerVoxel,
      memory,
      output,
      dtype,
      close: async () => {
        await tileModel.dispose();
        model.dispose();
        await opened.close?.();
      },
    };
  } catch (err) {
    model.dispose();
    await input?.close?.();
    throw err;
  }
}

/** The key of a level-0 chunk of an OME-Zarr written here ('/0/c/i/j' in Zarr v3, '/0/i/j' in v2) -> its index. */
function levelZeroChunkOfKey(key: string): number[] | null {
  const match = /^\/0\/(?:c\/)?(\d+(?:\/\d+)*)$/.exec(key);
  return match ? match[1].split('/').map(Number) : null;
}

/**
 * Denoises the array at `input` into a new OME-Zarr at `out` in bounded memory, then builds its
 * pyramid. Refuses an output that is, contains or lies inside the input before anything is written.
 * With `resume`, continues an interrupted run at `out` (same model and options), verifying what is there.
 * With `shard`, computes that shard's blocks only; the shard that finds all shards complete builds the
 * pyramid (two finishing at the same instant both build it, writing identical bytes).
 */
export async function denoiseUrl(opts: DenoiseUrlOptions): Promise<DenoiseChunkedResult> {
  await assertOutputIsNotInput(opts.input, opts.out);
  const job = await prepareDenoise(opts);
  let writer: OmeZarrWriter | null = null;
  let store: ByteStore | null = null;
  try {
    const { input, manifest, output } = job;
    if (opts.resume || opts.shard) writer = await openOmeZarrWriter(opts.out, opts.s3);
    if (writer && writer.info.shape.join() !== input.info.shape.join()) {
      throw new OutputError(opts.out, `holds an array of shape [${writer.info.shape.join(', ')}], the input is [${input.info.shape.join(', ')}]`);
    }
    if (!writer || opts.shard) {
      // The input's own noise from a seeded sample of 4 chunks: deterministic, so every shard writes the
      // same metadata. A failed fit (e.g. a constant array) is recorded, never a reason to stop denoising.
      // The record's output name is left out: the output is where it is stored, and outputs at two paths must be equal.
      const inputNoise = await fitChunkedInputNoise(input, { sampleBlocks: 4, seed: 1 }).then(
        (fitted) => {
          const { output: _outputName, ...record } = inputNoiseRecord(fitted.nlf, opts.input, opts.out, { kind: 'chunks', chunks: fitted.chunks, seed: fitted.seed });
          return record;
        },
        (error: unknown) => ({ error: error instanceof Error ? error.message : String(error) }),
      );
      // Shards all create the output; creation is idempotent and refuses a different one (other model, options).
      writer = await createOmeZarr(opts.out, {
        shape: [...input.info.shape],
        chunks: writer ? [...writer.info.chunks] : job.memory.coreShape,
        dtype: job.dtype,
        axes: [...input.info.axes],
        placement: input.info.placement,
        ngffVersion: opts.ngffVersion ?? '0.5',
        provenance: {
          software: 'blindspot',
          version: VERSION,
          command: opts.command ?? [],
          input: opts.input,
          model: { folder: opts.modelDir, method: manifest.method, network: manifest.network, sha256: job.modelHash },
          output,
          ...(manifest.prior ? { prior: manifest.prior } : {}),
          // Noise-level functions of the training images (input units): var = a * x + b, sigma at the median.
          ...(manifest.noise ? { noise: manifest.noise.map((n) => ({ image: n.name, a: n.a, b: n.b, sigma: n.sigma, medianIntensity: n.medianIntensity })) } : {}),
          inputNoise,
        },
        window: displayWindow(manifest.normalisation),
        s3: opts.s3,
        // Marked incomplete until the pyramid is built: a failed or killed run never leaves a result-looking output.
        markIncomplete: true,
      });
    }
    store = openByteStore(opts.out, opts.s3);
    const fingerprint = runFingerprint({
      model: job.modelHash,
      tta: opts.tta === true,
      ...(opts.sampling ? { sampling: opts.sampling } : {}),
      input: { shape: input.info.shape, dtype: input.info.dtype, channel: opts.channel ?? null, time: opts.time ?? null },
      output: { kind: output, shape: writer.info.shape, chunks: writer.info.chunks, dtype: writer.info.dtype },
    });
    const history = opts.history ? new RunHistoryRecorder(store, opts.shard, opts.maxMemoryBytes, opts.history.backend) : null;
    const started = performance.now();
    const result = await denoiseChunked({
      input,
      output: writer,
      model: job.tileModel,
      ...job.geometry,
      normalisation: manifest.normalisation,
      outputNormalisation: output === 'uncertainty' ? { ...manifest.normalisation, offset: 0 } : manifest.normalisation,
      maxMemoryBytes: opts.maxMemoryBytes,
      modelWeightBytes: job.modelWeightBytes,
      bytesPerVoxel: job.bytesPerVoxel,
      ...(job.tileModel.name === 'tfjs' ? { tfjsModel: job.model } : {}),
      tta: opts.tta,
      journal: { store, fingerprint },
      resume: opts.resume,
      shard: opts.shard,
      outputChunkOfKey: levelZeroChunkOfKey,
      signal: opts.signal,
      onEvent: history ? (e) => (history.observe(e), opts.onEvent?.(e)) : opts.onEvent,
    });
    await history?.save(result, (performance.now() - started) / 1000);
    if (result.allComplete) {
      opts.onEvent?.({ type: 'pyramid' });
      await writer.buildPyramid(opts.pyramidLevels === undefined ? {} : { levels: opts.pyramidLevels });
    }
    return result;
  } catch (err) {
    // The marker set at creation stays; this records why, for whoever finds the output.
    await writer?.markIncomplete((err as Error)?.message ?? String(err));
    throw err;
  } finally {
    await job.close();
    await writer?.close?.();
    await store?.close?.();
  }
}
