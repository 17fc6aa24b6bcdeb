#!/usr/bin/env node
/**
 * The `blindspot` command. It parses options and calls pipeline functions; it holds no logic of
 * its own beyond mapping errors to exit codes.
 */
import path from 'node:path';
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { debugWanted, ExitCode, exitWithOutcome, reportFailure, UsageError } from '../core/errors.js';
import { VERSION } from '../core/version.js';
import { expandInputs } from '../storage/index.js';
import { openChunkedSource } from '../storage/open.js';
import { trainModel, TrainingInterrupted, type NamedSource, type NetworkOverrides } from '../pipeline/train.js';
import { methodNames, methods } from '../methods/registry.js';
import { denoiseFiles, outputPathFor, type OutputType } from '../pipeline/denoise.js';
import { resolveShard, shardBlockRange } from '../pipeline/shard.js';
import { describePlan, PLAN_HELP, runPlan } from './plan.js';
import { runWatch, WATCH_HELP } from './watch.js';
import { CALIBRATE_HELP, runCalibrate } from './calibrate.js';
import { EXPORT_HELP, runExport } from './export.js';
import { DISTILL_HELP, runDistill } from './distill.js';
import { planDenoise } from '../pipeline/plan.js';
import { denoiseUrl, parseByteSize, STREAM_DEFAULT_SAMPLES } from '../pipeline/streamDenoise.js';
import { evaluateFolders } from '../pipeline/evaluate.js';
import { runDemo } from '../pipeline/demo.js';
import { type Reporter } from './progress.js';
import { runNoise } from './noise.js';
import { REPORT_HELP, reportAfterRun, runReport } from './report.js';
import { assertReportWritable } from '../report/index.js';
import { loadNoiseModel, noiseSpecOf } from '../noise/model.js';
import { parseNoiseSpec } from '../models/bayes.js';
import type { DenoiseOutput } from '../methods/denoiser.js';
import { choice, commonOptions, DEFAULT_GRACE_SECONDS, ENGINE_HELP, engineOptions, engineRequest, interruptController, intOption, networkOverridesOption, numberOption, parse, setUp, shapeOption, trainingRunOptions, withoutRunOptions } from './options.js';

/** The methods part of `train --help`: each registered method's name and summary, in registry order. */
function methodHelp(): string {
  return [...methods.values()].map((m) => `  ${m.name.padEnd(12)} ${m.summary}`).join('\n');
}

const HELP: Record<string, string> = {
  main: `blindspot ${VERSION}: self-supervised (Noise2Void family) denoising for microscopy and astronomy images

Usage: blindspot <command> [options]

Commands:
  train <inputs...> --out <model-dir>      learn a denoiser from noisy images alone
  denoise <model-dir> <inputs...> --out <dir>  denoise images with a trained model
  distill <teacher> <inputs...> --out <dir>  train a fast U-Net to reproduce a slow model's output
  plan <input> --model <model-dir>         blocks, bytes and measured cost of a streaming denoise; shards for a target time
  watch <dir|s3://prefix> --model <m> --out <dest>   denoise each new acquisition as it lands
  eval --clean <dir> --denoised <dir>      PSNR and SSIM against clean images
  noise <inputs...>                        noise level (variance vs intensity) per image; --calibrate a noise model
  calibrate <image> --denoiser median|gaussian|nlm   a classical denoiser's parameter by the J-invariant loss
  report <model-dir|output> --out r.html   one self-contained HTML page: before/after tiles, loss, noise, throughput, provenance
  export <model-dir> [--format onnx|bioimageio --out <file>]   the model as ONNX or a bioimage.io package
  demo                                     the whole job on a built-in synthetic 3D sample

Run 'blindspot <command> --help' for its options and examples.
Exit codes: 0 ok, 1 unexpected failure, 2 usage, 3 bad input, 4 output refused, 130 interrupted (resumable).
--debug (any command) adds the stack trace to an error message.`,
  train: `Usage: blindspot train <inputs...> --out <model-dir> [options]

Inputs are image files (PNG, TIFF incl. multi-page stacks, FITS, .npy), folders or globs.
All inputs must be 2D, or all 3D; the network follows. Every method works in 2D and 3D and is
saved in the model: 'blindspot denoise' needs no method options.

Methods (--method):
${methodHelp()}

Options:
  --out <dir>               model folder to create (required)
  --method M                one of the methods above (default n2v)
  --targets <dir|'glob'|file>  n2n / care: the target images (repeat the option for several files; quote
                            globs), paired with the inputs by sorted file name: same count, same shapes.
                            Streamed inputs take streamed targets (.zarr, OME-Zarr, s3://, TIFF stacks with
                            --stream), paired the same way; their chunk shapes may differ from the inputs'
  --struct-mask S           structn2v: horizontal:N | vertical:N | depth:N (a centred line of N pixels, N odd)
                            or a mask file: .npy, .json nested arrays, or text rows of 0/1 (2D or 3D, odd sides)
  --grid K                  noise2self / noise2info: grid side (default 4: 16 phases in 2D, 64 in 3D)
  --steps N                 total optimiser steps (default 1000)
  --batch-size N            patches per step (default 16 in 2D, 4 in 3D)
  --patch YxX | ZxYxX       patch size (default 64x64, or 32x64x64)
  --seed N                  seed for weights, patches and masks (default 1)
  --learning-rate F         Adam learning rate (default 4e-4), halved on validation plateaus
  --lr-schedule plateau|constant   constant: never halve it (default plateau)
  --adam-epsilon F          Adam's epsilon (default 1e-7, tfjs'; PyTorch's 1e-8)
  --mask-fraction F         fraction of pixels masked per patch (default 0.015)
  --strategy S              uniform-without-centre (n2v default) | uniform-with-centre | median (n2v2 default)
  --mask-radius R           replacement window half-width in pixels (default 2: a 5x5 window)
  --loss mse|mae            loss on masked pixels (default mse)
  --prior gaussian:S | poisson-gaussian:A,B | noise-model.json | learned | nlf
                            predict a Gaussian prior and train it by the likelihood under this noise
                            (input units; var = A*x + B; or the a, b of a 'blindspot noise --calibrate'
                            model or NLF record); 'learned': a Gaussian sigma trained with the network;
                            'nlf': the training images' noise-level fits (in-memory inputs). Denoise then
                            gives the posterior mean (Laine et al.). For the blind-spot methods; for dbsn
                            it is the noise model of its loss (default nlf). pn2v and divnoising require it:
                            it is p(x|s) of their loss (a GMM noise-model file is used whole; docs/diverse.md)
  --prior-samples S         pn2v: prior samples per pixel, the network's outputs (default 64; the paper's 800)
  --depth N --filters N --latent-channels N   divnoising VAE: downsamplings (default 2), filters (default 32),
                            latent channels (default 32 in 2D, 16 in 3D)
  --depth N --filters N --kernel-size N   U-Net shape (default 2, 32, 3)
  --widths halving|level --init glorot|torch --batch-norm-epsilon F
                            U-Net: conv widths (default halving, CSBDeep's; level: the PyTorch reference's), initial
                            weights (default glorot; torch: PyTorch's Conv default), BN epsilon (default 1e-3); docs/parity.md
  --batch-norm, --no-batch-norm
                            U-Net batch norm (default: on from batch size 16; below it, statistics of a
                            few patches bias the output at inference)
  --depth N --filters N     laine19 branch U-Net: default depth 3 (3D: 1), 16 filters on CPU backends (wasm, cpu,
                            tensorflow), the paper's depth 5, 48 filters (3D: 3, 32) on a GPU
  --filters N --blocks N    dbsn: default 32 filters, 5 blocks (3D: 4) on CPU backends, the paper's
                            64, 9 (3D: 32, 4) on a GPU. On wasm (batch 4, 64x64) a step takes
                            about 2 s for these laine19 / dbsn defaults, 8-14 s at paper size, 0.7 s for the U-Net
  --network-size paper|small   override the backend's choice of the laine19 / dbsn defaults
  --normalisation meanstd|percentile   (default meanstd)
  --no-augment              no flips/rotations
  --no-classical-check      one image or stack: skip the closing comparison with a calibrated non-local means
                            (both scored by the J-invariant loss on the held-out slab; a warning when the filter wins)
  --val-fraction F          data held out for validation (default 0.1)
  --validate-every N        steps between validations and checkpoints (default steps/20)
  --resume                  continue an interrupted run in --out
  --overwrite               replace an existing model in --out
  --report <file.html>      afterwards, write the model's HTML report (blindspot report --help)

Streaming (inputs of any size; always for .zarr / OME-Zarr / s3:// inputs or targets, or with --stream for
TIFF stacks and frame folders): patches from random chunk-aligned regions through a bounded chunk cache
(n2n / care: the target's chunks under each region too), statistics from a sample of the inputs' chunks:
  --max-memory SIZE         bound on the sampler's cache and queues (default 2GiB; the model is extra)
  --background T            skip patches whose mean is below T (raw intensity units)
  --s3-endpoint URL --channel N --time N   as for denoise
  --backend B               auto|tensorflow-gpu|webgpu|tensorflow|wasm|cpu (default auto). auto takes the
                            first that works: tensorflow-gpu, webgpu on a hardware GPU (Dawn; Vulkan on
                            Linux), tensorflow, wasm, cpu. tensorflow(-gpu) need the optional packages
                            @tensorflow/tfjs-node(-gpu), whose install downloads libtensorflow (see docs/webgpu.md)
  --verbose                 also log which backends auto skipped and why
  --threads N               CPU threads for wasm (default: all cores)
  --json                    JSON lines instead of a progress bar

Examples:
  blindspot train data/noisy/*.tif --out models/conv --steps 2000
  blindspot train stack.tif --out models/stack3d --patch 16x64x64 --method n2v2
  blindspot train data/noisy/*.tif --out models/laine --method laine19 --prior gaussian:25
  blindspot train data/noisy/*.tif --out models/dbsn --method dbsn --steps 2000
  blindspot train scan.tif --out models/striped --method structn2v --struct-mask horizontal:7
  blindspot train data/shot1 --targets data/shot2 --out models/n2n --method n2n
  blindspot train s3://lab/raw/noisy.zarr --targets s3://lab/raw/clean.zarr --method care --out models/care --patch 16x64x64
  blindspot train data/noisy --out models/conv --resume
  blindspot train s3://lab/raw/vol.zarr --out models/vol --patch 16x64x64 --max-memory 4GiB --background 120`,
  denoise: `Usage: blindspot denoise <model-dir> <inputs...> --out <dir> [options]

Options:
  --out <dir>               output folder (required; never the input's folder for same-named files)
  --dtype float32|input     output sample type: float32 (default, PNG inputs then go to .tif) or the input's type, rounded and clipped
  --tta                     average the 8 flips/rotations (slower, slightly better)
  --tile YxX | ZxYxX        tile core size (default: whole image if it fits the memory bound)
  --overwrite               replace existing outputs
                            Each input's noise (NLF fit, in a worker while the network predicts) is written
                            beside its output as <output>.noise.json; an existing one is refused unless --overwrite
  --uncertainty             models trained with --prior: also write the posterior standard deviation
                            (<name>.std.tif, or <out>.std.zarr when streaming)
                            (divnoising: the standard deviation over its posterior samples)
  --prior-mean              models trained with --prior: write the prior mean instead of the posterior mean
${ENGINE_HELP}
  --samples N               divnoising: posterior samples averaged for the MMSE and --uncertainty (default
                            100 in memory, 20 per block when streaming: every block pays them)
  --write-samples K         divnoising: also write K posterior samples (<name>.sample<k>.tif; streaming:
                            <out>.sample<k>.zarr)
  --sample-seed N           divnoising: seed of the samples (default 1); each sample's noise is a function of
                            the seed and the position in the image, so tiles, resumes and shards agree
  --backend B --threads N --verbose --json   as for train (--threads: also ONNX Runtime's intra-op threads)
  --report <file.html>      afterwards, write the HTML report: before/after tiles, noise, loss, provenance
                            (streamed: also throughput per chunk; a shard writes it once all shards are done)

Streaming (any size, bounded memory): one chunked input (.zarr, OME-Zarr, TIFF stack, frame folder, s3://...)
and a .zarr or s3:// --out, written as OME-Zarr with a pyramid:
  --max-memory SIZE         memory bound that sets tile/chunk size, queues and cache (default 2GiB)
  --resume                  continue an interrupted run (finished chunks are verified, then skipped)
  --s3-endpoint URL         S3-compatible endpoint (else BLINDSPOT_S3_ENDPOINT / AWS_ENDPOINT_URL_S3); every S3
                            request may take 5 s to connect and 30 s of silence, and is tried 8 times (with
                            backoff) before the run fails naming the endpoint: BLINDSPOT_S3_CONNECT_TIMEOUT_MS,
                            BLINDSPOT_S3_REQUEST_TIMEOUT_MS, BLINDSPOT_S3_MAX_ATTEMPTS change them
  --ngff-version 0.5|0.4    OME-Zarr version of the output (default 0.5, Zarr v3)
  --output-chunks YxX|ZxYxX output chunk (= tile core) shape, multiples of the network's pooling size
                            (default: the largest that --max-memory allows)
  --channel N --time N      channel and time point of a multi-channel / time-lapse OME-Zarr, ImageJ
                            hyperstack or OME-TIFF input

Archive scale (see 'blindspot plan' for block counts, measured costs and a shard count):
  --shard i/N               compute shard i (0-based) of N: a contiguous, balanced run of output blocks.
                            Shards may start at the same moment; they never write the same block, any of
                            them may create the output, the last to finish builds the pyramid. A shard
                            rerun after a kill continues its part (no --resume needed).
  --shard-count N           N shards, index from JOB_COMPLETION_INDEX (Kubernetes Indexed Job) or
                            AWS_BATCH_JOB_ARRAY_INDEX (AWS Batch array job)
  --grace-seconds S         after SIGTERM/SIGINT, finish the blocks in flight for at most S seconds, then
                            exit 130 (default 25; Kubernetes waits 30 s before it kills)
  --dry-run                 print the plan (blocks, bytes, memory, this shard's blocks) and write nothing
With image files (no Zarr/S3), --shard splits the sorted file list the same way.

Examples:
  blindspot denoise models/conv data/noisy/*.tif --out data/denoised
  blindspot denoise models/stack3d data/volume.ome.zarr --out data/volume-denoised.zarr --max-memory 4GiB
  blindspot denoise models/stack3d s3://lab/raw/vol.zarr --out s3://lab/denoised/vol.zarr --resume
  blindspot denoise models/conv big.png --out out --dtype input --tile 512x512 --tta
  blindspot denoise models/vol s3://lab/raw/vol.zarr --out s3://lab/denoised/vol.zarr --shard-count 16 --json`,
  eval: `Usage: blindspot eval --clean <dir|files> --denoised <dir|files> [--range R] [--json]

Matches images by file name (without extension) and prints PSNR (dB) and SSIM per image and their mean.
The data range R defaults to the clean image's integer type range (255 for 8-bit), else its max - min.

Example:
  blindspot eval --clean data/clean --denoised data/denoised --json`,
  plan: PLAN_HELP,
  watch: WATCH_HELP,
  calibrate: CALIBRATE_HELP,
  export: EXPORT_HELP,
  distill: DISTILL_HELP,
  demo: `Usage: blindspot demo [--out <dir>] [--steps N] [--backend B] [--threads N] [--json]

Makes a synthetic microscopy-like 3D volume (blobs and filaments) with Poisson-Gaussian noise, trains a
small 3D Noise2Void briefly, denoises it, prints PSNR of noisy and denoised against the truth, and writes
a before/after montage, a loss curve and an HTML run report, report.html (default folder: demo-output).`,
  report: REPORT_HELP,
};

async function main(argv: string[]): Promise<number> {
  // --debug (any command): stack traces with error messages (core/errors.ts reportFailure).
  const [command, ...rest] = argv.filter((a) => a !== '--debug');
  if (!command || command === '--help' || command === '-h' || command === 'help') {
    process.stdout.write(HELP.main + '\n');
    return command ? ExitCode.ok : ExitCode.usage;
  }
  if (command === '--version' || command === '-v') {
    process.stdout.write(VERSION + '\n');
    return ExitCode.ok;
  }
  switch (command) {
    case 'train':
      return runTrain(rest);
    case 'denoise':
      return runDenoise(rest);
    case 'eval':
      return runEval(rest);
    case 'demo':
      return runDemoCommand(rest);
    case 'plan':
      return runPlan(rest);
    case 'watch':
      return runWatch(rest);
    case 'calibrate':
      return runCalibrate(rest);
    case 'noise':
      return runNoise(rest);
    case 'report':
      return runReport(rest);
    case 'export':
      return runExport(rest);
    case 'distill':
      return runDistill(rest);
    default:
      throw new UsageError(`unknown command '${command}'. Commands: train, denoise, distill, plan, watch, eval, noise, calibrate, report, export, demo (blindspot --help)`);
  }
}

/** A .zarr path or an s3:// URL: always read and written by the streaming pipelines. */
function isChunkedUrl(url: string): boolean {
  return /^s3:\/\//i.test(url) || /\.zarr\/?$/i.test(url);
}

async function runTrain(args: string[]): Promise<number> {
  const { values, positionals } = parse(
    args,
    {
      ...commonOptions,
      ...trainingRunOptions,
      method: { type: 'string' },
      targets: { type: 'string', multiple: true },
      'struct-mask': { type: 'string' },
      grid: { type: 'string' },
      blocks: { type: 'string' },
      'network-size': { type: 'string' },
      'mask-fraction': { type: 'string' },
      strategy: { type: 'string' },
      'mask-radius': { type: 'string' },
      'classical-check': { type: 'boolean', default: true },
      prior: { type: 'string' },
      report: { type: 'string' },
      'prior-samples': { type: 'string' },
      'latent-channels': { type: 'string' },
    },
    true,
  );
  if (values.help) return printHelp('train');
  // A noise-model file (blindspot noise --calibrate, or an NLF record) gives its Poisson-Gaussian summary;
  // a GMM file is also passed whole, for the methods whose loss is its likelihood.
  const priorFile = values.prior !== undefined && /\.json$/i.test(values.prior) ? await loadNoiseModel(values.prior) : undefined;
  const prior =
    values.prior === undefined
      ? undefined
      : values.prior === 'learned' || values.prior === 'nlf'
        ? values.prior
        : priorFile
          ? noiseSpecOf(priorFile)
          : parseNoiseSpec(values.prior);
  if (positionals.length === 0) throw new UsageError('train needs input images (blindspot train --help)');
  if (!values.out) throw new UsageError('train needs --out <model-dir>');
  if (values.report) await assertReportWritable(values.report);
  // Zarr and S3 inputs (or targets) always stream; --stream or --max-memory streams TIFF stacks and frame folders too.
  const streaming =
    values.stream || values['max-memory'] !== undefined || [...positionals, ...(values.targets ?? [])].some(isChunkedUrl);
  if (!streaming) {
    for (const option of ['s3-endpoint', 'channel', 'time', 'background'] as const) {
      if (values[option] !== undefined) throw new UsageError(`--${option} applies only to streaming training (.zarr or s3:// inputs, or --stream)`);
    }
  }
  const s3 = values['s3-endpoint'] ? { endpoint: values['s3-endpoint'] } : undefined;
  // Streamed inputs and targets are opened alike (same channel, time point and endpoint) and named as
  // given; train pairs them by sorted name, as it does files.
  const openSources = (urls: string[]): Promise<NamedSource[]> =>
    Promise.all(
      urls.map(async (url) => ({
        reader: await openChunkedSource(url, { channel: intOption('channel', values.channel), time: intOption('time', values.time), s3 }),
        name: url,
      })),
    );
  const sources = streaming ? await openSources(positionals) : undefined;
  const targetSources =
    streaming && values.targets
      ? await openSources(values.targets).catch(async (err: unknown) => {
          await Promise.all((sources ?? []).map((s) => s.reader.close?.()));
          throw err;
        })
      : undefined;
  const inputs = streaming ? undefined : await expandInputs(positionals);
  const background = numberOption('background', values.background);
  const network: NetworkOverrides = networkOverridesOption(values);
  const blocks = intOption('blocks', values.blocks);
  if (blocks !== undefined) network.blocks = blocks;
  const targets = values.targets && !streaming ? await expandInputs(values.targets) : undefined;
  const priorSamples = intOption('prior-samples', values['prior-samples']);
  const latentChannels = intOption('latent-channels', values['latent-channels']);
  if (priorSamples !== undefined) network.priorSamples = priorSamples;
  if (latentChannels !== undefined) network.latentChannels = latentChannels;
  const { reporter, backend } = await setUp(values);
  const interrupt = interruptController(reporter);
  try {
    const manifest = await trainModel({
      inputs,
      sources,
      targetSources,
      streaming: streaming
        ? {
            maxMemoryBytes: parseByteSize(values['max-memory'] ?? '2GiB'),
            ...(background !== undefined ? { background: { threshold: background } } : {}),
          }
        : undefined,
      out: values.out,
      method: choice('method', values.method, methodNames()),
      targets,
      structMask: values['struct-mask'],
      grid: intOption('grid', values.grid),
      networkSize: choice('network-size', values['network-size'], ['paper', 'small'] as const),
      steps: intOption('steps', values.steps),
      batchSize: intOption('batch-size', values['batch-size']),
      patchShape: shapeOption('patch', values.patch),
      seed: intOption('seed', values.seed),
      learningRate: numberOption('learning-rate', values['learning-rate']),
      learningRateSchedule: choice('lr-schedule', values['lr-schedule'], ['plateau', 'constant'] as const),
      adamEpsilon: numberOption('adam-epsilon', values['adam-epsilon']),
      maskFraction: numberOption('mask-fraction', values['mask-fraction']),
      strategy: choice('strategy', values.strategy, ['uniform-without-centre', 'uniform-with-centre', 'median'] as const),
      maskRadius: intOption('mask-radius', values['mask-radius']),
      loss: choice('loss', values.loss, ['mse', 'mae'] as const),
      prior,
      ...(priorFile?.kind === 'gmm' ? { noiseModel: priorFile } : {}),
      network,
      normalisation: choice('normalisation', values.normalisation, ['meanstd', 'percentile'] as const),
      augment: values.augment,
      classicalCheck: values['classical-check'],
      valFraction: numberOption('val-fraction', values['val-fraction']),
      validateEvery: intOption('validate-every', values['validate-every']),
      resume: values.resume,
      overwrite: values.overwrite,
      backend,
      signal: interrupt.signal,
      onEvent: (e) => reporter.train(e),
      command: ['blindspot', 'train', ...args],
    });
    reporter.finish();
    reporter.log(`model written to ${values.out} (best validation at step ${manifest.training.bestStep})`);
    if (values.report) await reportAfterRun(values.out, values.report, reporter, { backend: backend.name });
    return ExitCode.ok;
  } catch (err) {
    reporter.finish();
    if (err instanceof TrainingInterrupted) {
      reporter.log(err.message);
      return ExitCode.interrupted;
    }
    throw err;
  } finally {
    interrupt.dispose();
    await Promise.all([...(sources ?? []), ...(targetSources ?? [])].map((s) => s.reader.close?.()));
  }
}

async function runDenoise(args: string[]): Promise<number> {
  const { values, positionals } = parse(
    args,
    {
      ...commonOptions,
      out: { type: 'string' },
      dtype: { type: 'string' },
      tta: { type: 'boolean', default: false },
      tile: { type: 'string' },
      overwrite: { type: 'boolean', default: false },
      'max-memory': { type: 'string' },
      resume: { type: 'boolean', default: false },
      's3-endpoint': { type: 'string' },
      'ngff-version': { type: 'string' },
      channel: { type: 'string' },
      time: { type: 'string' },
      uncertainty: { type: 'boolean', default: false },
      'prior-mean': { type: 'boolean', default: false },
      samples: { type: 'string' },
      'write-samples': { type: 'string' },
      'sample-seed': { type: 'string' },
      shard: { type: 'string' },
      'shard-count': { type: 'string' },
      'grace-seconds': { type: 'string' },
      'dry-run': { type: 'boolean', default: false },
      'output-chunks': { type: 'string' },
      report: { type: 'string' },
      ...engineOptions,
    },
    true,
  );
  if (values.help) return printHelp('denoise');
  const engine = engineRequest(values);
  const shard = resolveShard({ shard: values.shard, shardCount: values['shard-count'] });
  const graceSeconds = numberOption('grace-seconds', values['grace-seconds']) ?? DEFAULT_GRACE_SECONDS;
  if (!(graceSeconds > 0)) throw new UsageError(`--grace-seconds must be positive, got '${values['grace-seconds']}'`);
  if (values.uncertainty && values['prior-mean']) throw new UsageError('--uncertainty and --prior-mean do not go together: the uncertainty belongs to the posterior mean');
  const [modelDir, ...inputArgs] = positionals;
  if (!modelDir || inputArgs.length === 0) throw new UsageError('denoise needs <model-dir> and input images (blindspot denoise --help)');
  if (!values.out) throw new UsageError('denoise needs --out <dir>');
  if (values.report) await assertReportWritable(values.report);
  const outputType = choice('dtype', values.dtype, ['float32', 'input'] as const) as OutputType | undefined;
  const samples = intOption('samples', values.samples);
  const writeSamples = intOption('write-samples', values['write-samples']) ?? 0;
  const sampleSeed = intOption('sample-seed', values['sample-seed']) ?? 1;
  if (isChunkedUrl(values.out) || inputArgs.some(isChunkedUrl)) {
    // Streaming: one chunked input (Zarr, TIFF stack, frame folder; local or S3) -> one OME-Zarr.
    if (inputArgs.length !== 1) throw new UsageError('a streaming denoise (Zarr or S3 input or output) takes exactly one input');
    if (!isChunkedUrl(values.out)) throw new UsageError(`--out must be a .zarr path or an s3:// URL for a chunked input, got '${values.out}'`);
    if (values.tile !== undefined) throw new UsageError('--tile does not apply to a streaming denoise: the output chunks are the tiles, sized by --max-memory');
    if (values.overwrite) throw new UsageError('--overwrite does not apply to a streaming denoise: delete the output, or pass --resume to continue it');
    const ngffVersion = choice('ngff-version', values['ngff-version'], ['0.4', '0.5'] as const);
    const { reporter, backend } = await setUp(values);
    const common = {
      input: inputArgs[0],
      modelDir,
      maxMemoryBytes: parseByteSize(values['max-memory'] ?? '2GiB'),
      s3: values['s3-endpoint'] ? { endpoint: values['s3-endpoint'] } : undefined,
      channel: intOption('channel', values.channel),
      time: intOption('time', values.time),
      tta: values.tta,
      outputType,
      shard,
      outputChunks: shapeOption('output-chunks', values['output-chunks']),
      engine,
      ...(samples !== undefined || writeSamples > 0 || values['sample-seed'] !== undefined
        ? { sampling: { samples: samples ?? STREAM_DEFAULT_SAMPLES, seed: sampleSeed } }
        : {}),
    };
    if (values['dry-run']) {
      const { plan } = await planDenoise({ ...common, output: values['prior-mean'] ? 'prior-mean' : 'denoised', measure: false, backend: backend.name });
      reporter.event('plan', { ...plan, out: values.out, resume: values.resume, dryRun: true });
      if (!reporter.json) reporter.log(describePlan(plan) + `\n  would write ${values.out}${values.uncertainty ? ' and its .std.zarr' : ''}; nothing written (--dry-run)`);
      return ExitCode.ok;
    }
    const interrupt = interruptController(reporter, graceSeconds);
    const recorded = ['blindspot', 'denoise', ...withoutRunOptions(args)];
    const uncertaintyOut = values.out.replace(/\.zarr\/?$/i, '').replace(/\/+$/, '') + '.std.zarr';
    try {
      const runs: Array<{ out: string; output: DenoiseOutput; sampleIndex?: number }> = [{ out: values.out, output: values['prior-mean'] ? 'prior-mean' : 'denoised' }];
      // A second pass: the tile pipeline carries one channel.
      if (values.uncertainty) runs.push({ out: uncertaintyOut, output: 'uncertainty' });
      const base = values.out.replace(/\.zarr\/?$/i, '').replace(/\/+$/, '');
      for (let k = 0; k < writeSamples; k++) runs.push({ out: `${base}.sample${k}.zarr`, output: 'sample', sampleIndex: k });
      let result: Awaited<ReturnType<typeof denoiseUrl>> | undefined;
      for (const run of runs) {
      result = await denoiseUrl({
        ...common,
        out: run.out,
        output: run.output,
        ...(run.sampleIndex !== undefined && common.sampling ? { sampling: { ...common.sampling, sampleIndex: run.sampleIndex } } : {}),
        ngffVersion,
        resume: values.resume,
        command: recorded,
        history: { backend: backend.name },
        signal: interrupt.signal,
        onEvent: (e) => {
          if (e.type === 'model' || e.type === 'engine') reporter.denoise(e);
          else reporter.event(e.type, { ...e });
        },
      });
      if (result.interrupted) break;
      }
      if (!result) throw new Error('no run');
      reporter.finish();
      if (result.interrupted) {
        reporter.log(`interrupted after ${result.chunksSkipped + result.chunksWritten} of ${result.chunksTotal} chunks; run again ${shard ? 'the same command' : 'with --resume'} to finish`);
        return ExitCode.interrupted;
      }
      reporter.event('done', { outputs: runs.map((r) => r.out), chunksWritten: result.chunksWritten, chunksSkipped: result.chunksSkipped, allComplete: result.allComplete, ...(shard ? { shard } : {}) });
      if (!reporter.json) {
        const waiting = shard && !result.allComplete ? '; other shards still running (the last to finish builds the pyramid)' : '';
        reporter.log(`${result.chunksWritten} chunk(s) denoised (${result.chunksSkipped} already done) into ${runs.map((r) => r.out).join(' and ')}${waiting}`);
      }
      // A shard's report waits for the last shard: built from the output alone, it shows every shard.
      if (values.report && result.allComplete) await reportAfterRun(values.out, values.report, reporter, { backend: backend.name });
      else if (values.report) reporter.log(`report not written: other shards still running; the last to finish writes it (or run 'blindspot report ${values.out}')`);
      return ExitCode.ok;
    } finally {
      interrupt.dispose();
    }
  }
  for (const option of ['max-memory', 's3-endpoint', 'ngff-version', 'channel', 'time', 'output-chunks'] as const) {
    if (values[option] !== undefined) throw new UsageError(`--${option} applies only to a streaming denoise (a .zarr or s3:// input or --out)`);
  }
  if (values.resume) throw new UsageError('--resume applies only to a streaming denoise (a .zarr or s3:// --out)');
  // Image files: a shard takes a contiguous run of the sorted inputs.
  const allInputs = (await expandInputs(inputArgs)).sort();
  const range = shard ? shardBlockRange(allInputs.length, shard) : { start: 0, end: allInputs.length };
  const inputs = allInputs.slice(range.start, range.end);
  if (values['dry-run']) {
    const type = outputType ?? 'float32';
    const listed = inputs.map((input) => ({ input, output: outputPathFor(input, values.out as string, type) }));
    if (values.json) process.stdout.write(JSON.stringify({ type: 'plan', dryRun: true, images: listed, ...(shard ? { shard } : {}) }) + '\n');
    else process.stdout.write(listed.map((l) => `${l.input} -> ${l.output}`).join('\n') + `\n${listed.length} image(s) would be denoised; nothing written (--dry-run)\n`);
    return ExitCode.ok;
  }
  if (inputs.length === 0) {
    process.stderr.write(`blindspot: shard ${shard?.index}/${shard?.count} has no images (${allInputs.length} input(s)); nothing to do\n`);
    return ExitCode.ok;
  }
  const { reporter, backend } = await setUp(values);
  const outputs = await denoiseFiles({
    modelDir,
    inputs,
    outDir: values.out,
    outputType,
    tta: values.tta,
    tileShape: shapeOption('tile', values.tile),
    overwrite: values.overwrite,
    uncertainty: values.uncertainty,
    priorMean: values['prior-mean'],
    engine,
    samples,
    writeSamples,
    sampleSeed,
    onEvent: (e) => reporter.denoise(e),
  });
  reporter.finish();
  reporter.event('done', { outputs });
  if (!reporter.json) reporter.log(`${outputs.length} image(s) denoised into ${path.resolve(values.out)}`);
  if (values.report) await reportAfterRun(values.out, values.report, reporter, { modelDir, backend: backend.name, commands: [{ what: 'denoise', argv: ['blindspot', 'denoise', ...args] }] });
  return ExitCode.ok;
}

async function runEval(args: string[]): Promise<number> {
  const { values, positionals } = parse(
    args,
    {
      clean: { type: 'string', multiple: true },
      denoised: { type: 'string', multiple: true },
      range: { type: 'string' },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    false,
  );
  if (values.help) return printHelp('eval');
  void positionals;
  if (!values.clean?.length || !values.denoised?.length) throw new UsageError('eval needs --clean and --denoised (blindspot eval --help)');
  const report = await evaluateFolders({ clean: values.clean, denoised: values.denoised, range: numberOption('range', values.range) });
  if (values.json) {
    process.stdout.write(JSON.stringify(report, null, 2) + '\n');
  } else {
    const nameWidth = Math.max(5, ...report.images.map((i) => i.name.length));
    const lines = [`${'image'.padEnd(nameWidth)}  PSNR(dB)   SSIM`];
    for (const i of report.images) lines.push(`${i.name.padEnd(nameWidth)}  ${i.psnr.toFixed(2).padStart(8)}  ${i.ssim.toFixed(4)}`);
    lines.push(`${'mean'.padEnd(nameWidth)}  ${report.mean.psnr.toFixed(2).padStart(8)}  ${report.mean.ssim.toFixed(4)}   (${report.count} images)`);
    process.stdout.write(lines.join('\n') + '\n');
  }
  return ExitCode.ok;
}

async function runDemoCommand(args: string[]): Promise<number> {
  const { values } = parse(args, { ...commonOptions, out: { type: 'string' }, steps: { type: 'string' } }, false);
  if (values.help) return printHelp('demo');
  const { reporter, backend } = await setUp(values);
  await runDemo({ outDir: values.out ?? 'demo-output', steps: intOption('steps', values.steps), backend, reporter });
  return ExitCode.ok;
}

function printHelp(command: string): number {
  process.stdout.write(HELP[command] + '\n');
  return ExitCode.ok;
}

/**
 * The whole command in this process: its exit code, its failure reported on stderr exactly as the
 * program does (for tests and embedding; the process's exit code is not set).
 */
export async function runCli(argv: string[]): Promise<number> {
  try {
    return await main(argv);
  } catch (err) {
    return reportFailure(err, 'blindspot', debugWanted(argv));
  }
}

function isEntryPoint(): boolean {
  try {
    return process.argv[1] !== undefined && realpathSync(process.argv[1]) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

if (isEntryPoint()) exitWithOutcome(main(process.argv.slice(2)), 'blindspot');
