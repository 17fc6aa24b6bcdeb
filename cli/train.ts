/**
 * `blindspot train <inputs...> --out <model-dir>`: learns a denoiser from noisy images alone
 * (pipeline/train.ts). Image files train in memory; Zarr, S3 and (with --stream) TIFF stacks and frame
 * folders stream through a bounded chunk cache.
 */
import { ExitCode, UsageError } from '../core/errors.js';
import { expandInputs } from '../storage/index.js';
import { openChunkedSource } from '../storage/open.js';
import { trainModel, TrainingInterrupted, type NamedSource, type NetworkOverrides } from '../pipeline/train.js';
import { TRAIN_ENGINE_CHOICES } from '../pipeline/trainOptions.js';
import { methodNames, methods } from '../methods/registry.js';
import { parseByteSize } from '../pipeline/streamDenoise.js';
import { assertReportWritable } from '../report/index.js';
import { loadNoiseModel, noiseSpecOf } from '../noise/model.js';
import { parseNoiseSpec } from '../models/bayes.js';
import { reportAfterRun } from './report.js';
import { choice, commonOptions, interruptController, intOption, isChunkedUrl, networkOverridesOption, numberOption, parse, setUp, trainingRunOptions, trainingSchedule } from './options.js';

/** The methods part of `train --help`: each registered method's name and summary, in registry order. */
function methodHelp(): string {
  return [...methods.values()].map((m) => `  ${m.name.padEnd(12)} ${m.summary}`).join('\n');
}


export const TRAIN_HELP = `Usage: blindspot train <inputs...> --out <model-dir> [options]

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
  --lr-schedule plateau|constant|cosine
                            constant: never halve it; cosine: anneal it to 1% over the run's steps or
                            --time-budget, whichever ends it (default plateau)
  --adam-epsilon F          Adam's epsilon (default 1e-7, tfjs'; PyTorch's 1e-8)
  --mask-fraction F         fraction of pixels masked per patch (default 0.015)
  --strategy S              uniform-without-centre (n2v default) | uniform-with-centre | median (n2v2 default)
  --mask-radius R           replacement window half-width in pixels (default 2: a 5x5 window)
  --loss mse|mae            loss on masked pixels (default mse); dbsn, noise2info, pn2v and
                            divnoising have losses of their own and refuse it
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
                            weights (default torch: PyTorch's Conv default; glorot: Keras', the default before), BN epsilon
                            (default 1e-3); docs/parity.md
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
  --validate-every N        steps between validations and checkpoints (default steps/20; 100 with
                            --time-budget and no --steps)
  --time-budget T           wall-clock training budget (90s, 30m, 1.5h; plain numbers are seconds): the
                            run ends, finished, at the first step past it, or at --steps if sooner
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
  --threads N               CPU threads for wasm and for --train-engine onnx (default: all cores)
  --train-engine E          auto|onnx|tfjs (default auto): what computes the gradients. onnx: ONNX Runtime's
                            CPU kernels on the network's written-out backward pass, 2.6-3.9x the steps/s of wasm
                            (docs/engines.md), for 2D and 3D U-Nets of the methods with the plain masked loss (n2v,
                            n2v2, structn2v, noise2self, n2n, care; neighbor2neighbor with --loss mse; noise2info), --loss mse
                            or mae, or --prior and pn2v (tfjs computes the loss on the output); laine19, dbsn. auto: onnx where
                            the run qualifies and the backend is wasm or cpu, else tfjs (the log says why)
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
  blindspot train s3://lab/raw/vol.zarr --out models/vol --patch 16x64x64 --max-memory 4GiB --background 120`;

export async function runTrain(args: string[]): Promise<number> {
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
      'train-engine': { type: 'string' },
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
  if (values.help) {
    process.stdout.write(TRAIN_HELP + '\n');
    return ExitCode.ok;
  }
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
      ...trainingSchedule(values),
      maskFraction: numberOption('mask-fraction', values['mask-fraction']),
      strategy: choice('strategy', values.strategy, ['uniform-without-centre', 'uniform-with-centre', 'median'] as const),
      maskRadius: intOption('mask-radius', values['mask-radius']),
      prior,
      ...(priorFile?.kind === 'gmm' ? { noiseModel: priorFile } : {}),
      network,
      augment: values.augment,
      classicalCheck: values['classical-check'],
      resume: values.resume,
      overwrite: values.overwrite,
      backend,
      trainEngine: choice('train-engine', values['train-engine'], TRAIN_ENGINE_CHOICES),
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

