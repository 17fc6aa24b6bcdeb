/**
 * `blindspot denoise <model-dir> <inputs...> --out <dir>`: image files in memory (pipeline/denoise.ts),
 * or one chunked input streamed into an OME-Zarr (pipeline/streamDenoise.ts), whole or as one shard.
 */
import path from 'node:path';
import { ExitCode, UsageError } from '../core/errors.js';
import { expandInputs } from '../storage/index.js';
import { denoiseFiles, outputPathFor, type OutputType } from '../pipeline/denoise.js';
import { resolveShard, shardBlockRange } from '../pipeline/shard.js';
import { planDenoise } from '../pipeline/plan.js';
import { denoiseUrl, parseByteSize, STREAM_DEFAULT_SAMPLES } from '../pipeline/streamDenoise.js';
import { assertReportWritable } from '../report/index.js';
import type { DenoiseOutput } from '../methods/denoiser.js';
import { describePlan } from './plan.js';
import { reportAfterRun } from './report.js';
import { choice, commonOptions, DEFAULT_GRACE_SECONDS, ENGINE_HELP, engineOptions, engineRequest, interruptController, intOption, isChunkedUrl, numberOption, parse, setUp, shapeOption, withoutRunOptions } from './options.js';

export const DENOISE_HELP = `Usage: blindspot denoise <model-dir> <inputs...> --out <dir> [options]

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
  --backend B --threads N --verbose --json   as for train (--threads: also ONNX Runtime's intra-op threads;
                            default all cores; streaming a light model on few cores, --threads 1 can be faster)
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
  blindspot denoise models/vol s3://lab/raw/vol.zarr --out s3://lab/denoised/vol.zarr --shard-count 16 --json`;

export async function runDenoise(args: string[]): Promise<number> {
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
  if (values.help) {
    process.stdout.write(DENOISE_HELP + '\n');
    return ExitCode.ok;
  }
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

