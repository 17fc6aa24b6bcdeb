/**
 * `blindspot distill <teacher-model> <inputs...> --out <student-model>`: trains a plain U-Net to
 * reproduce a (slow) teacher model's denoised output (pipeline/distill.ts).
 */
import path from 'node:path';
import { ExitCode, UsageError } from '../core/errors.js';
import { expandInputs } from '../storage/index.js';
import { distillModel } from '../pipeline/distill.js';
import { TrainingInterrupted, type NetworkOverrides } from '../pipeline/train.js';
import { parseByteSize } from '../pipeline/streamDenoise.js';
import { commonOptions, ENGINE_HELP, engineOptions, engineRequest, interruptController, isChunkedUrl, intOption, networkOverridesOption, numberOption, parse, setUp, trainingRunOptions, trainingSchedule } from './options.js';

export const DISTILL_HELP = `Usage: blindspot distill <teacher-model> <inputs...> --out <student-model> [options]

Knowledge distillation (Wu et al. 2020, second stage): trains a plain U-Net (n2v's network, no
masking: every pixel in the loss) to reproduce the teacher's denoised output on the same data. The
teacher is any model folder; the point is a slow, good one (laine19 or dbsn, whose output is the
posterior mean): the student predicts several times faster. The teacher denoises the inputs first
(image files in memory; chunked inputs streamed into a temporary float32 Zarr beside the student's
folder, <out>.teacher-targets, removed when done), then the student trains on (input, teacher
output) pairs exactly as 'blindspot train --method care' would. The student is an ordinary model
folder (denoise, export, stream it as any other); its blindspot.json records the teacher (folder,
method, network, sha256 of its weights) under "distillation".

Options:
  --out <dir>               the student's model folder (required; not inside an input or the teacher)
  --clean <dir|'glob'|file> clean images (repeatable): each is noised with the teacher's noise model (its
                            prior, else its training images' noise-level fits: var = a x + b) and added with
                            itself as target, as in the paper. Image-file inputs only
  --tta                     the teacher's targets averaged over its 8 flips/rotations (a slower teacher pass)
${ENGINE_HELP}
                            (the teacher's pass; the student trains as 'blindspot train' does)
  --steps N --batch-size N --patch YxX|ZxYxX --seed N --learning-rate F --loss mse|mae
  --lr-schedule plateau|constant|cosine --adam-epsilon F --widths halving|level --init glorot|torch --batch-norm-epsilon F
  --depth N --filters N --kernel-size N --batch-norm/--no-batch-norm   the student U-Net's shape
  --normalisation meanstd|percentile --no-augment --val-fraction F --validate-every N
  --time-budget T
                            as for 'blindspot train' (the student's training)
  --resume                  continue an interrupted distillation (the teacher's streamed pass and the training)
  --overwrite               replace an existing student model in --out

Streaming (always for .zarr / OME-Zarr / s3:// inputs, or with --stream for TIFF stacks and frame folders):
  --max-memory SIZE         bound for the teacher's streamed pass and the training data side (default 2GiB);
                            the temporary Zarr needs disk for one float32 copy of each input
  --background T            skip training patches whose mean is below T (raw intensity units)
  --s3-endpoint URL --channel N --time N   as for train
  --backend B --threads N --json   as for train

Examples:
  blindspot train data/noisy/*.tif --out models/laine --method laine19 --prior nlf --steps 2000
  blindspot distill models/laine data/noisy/*.tif --out models/laine-student --steps 2000
  blindspot distill models/dbsn data/noisy --clean data/clean --out models/dbsn-student
  blindspot distill models/vol3d s3://lab/raw/vol.zarr --out models/vol3d-student --patch 16x64x64 --max-memory 4GiB`;

export async function runDistill(args: string[]): Promise<number> {
  const { values, positionals } = parse(
    args,
    {
      ...commonOptions,
      ...trainingRunOptions,
      clean: { type: 'string', multiple: true },
      tta: { type: 'boolean', default: false },
      ...engineOptions,
    },
    true,
  );
  if (values.help) {
    process.stdout.write(DISTILL_HELP + '\n');
    return ExitCode.ok;
  }
  const [teacher, ...inputArgs] = positionals;
  if (!teacher || inputArgs.length === 0) throw new UsageError('distill needs <teacher-model> and input images (blindspot distill --help)');
  if (!values.out) throw new UsageError('distill needs --out <student-model>');
  const streaming = values.stream || values['max-memory'] !== undefined || inputArgs.some(isChunkedUrl);
  if (!streaming) {
    for (const option of ['s3-endpoint', 'channel', 'time', 'background'] as const) {
      if (values[option] !== undefined) throw new UsageError(`--${option} applies only to streamed inputs (.zarr or s3://, or --stream)`);
    }
  }
  const background = numberOption('background', values.background);
  const engine = engineRequest(values);
  const network: NetworkOverrides = networkOverridesOption(values);
  const options = trainingSchedule(values);
  const maxMemoryBytes = streaming ? parseByteSize(values['max-memory'] ?? '2GiB') : undefined;
  const inputs = streaming ? inputArgs : await expandInputs(inputArgs);
  const clean = values.clean ? await expandInputs(values.clean) : undefined;
  const { reporter, backend } = await setUp(values);
  const interrupt = interruptController(reporter);
  try {
    const manifest = await distillModel({
      teacher,
      inputs,
      clean,
      out: values.out,
      tta: values.tta,
      engine,
      streaming: streaming
        ? {
            maxMemoryBytes,
            s3: values['s3-endpoint'] ? { endpoint: values['s3-endpoint'] } : undefined,
            channel: intOption('channel', values.channel),
            time: intOption('time', values.time),
            background,
          }
        : undefined,
      ...options,
      network,
      augment: values.augment,
      resume: values.resume,
      overwrite: values.overwrite,
      backend,
      signal: interrupt.signal,
      command: ['blindspot', 'distill', ...args],
      onEvent: (e) => {
        if (e.type === 'train') reporter.train(e.event);
        else if (e.type === 'teacher') {
          reporter.event('teacher', { method: e.manifest.method, weightsSha256: e.weightsSha256 });
          if (!reporter.json) reporter.log(`teacher ${teacher}: ${e.manifest.method}; denoising ${inputs.length} input(s) for the student's targets`);
        } else if (e.type === 'teacher-image') {
          reporter.event('teacher-image', { ...e });
          if (!reporter.json) reporter.log(`teacher output ${e.index + 1}/${e.count}: ${e.input} (${e.seconds.toFixed(1)} s)`);
        } else if (e.type === 'clean-pairs') {
          reporter.event('clean-pairs', { ...e });
          if (!reporter.json) reporter.log(`${e.count} clean image(s) noised with the teacher's noise model (${JSON.stringify(e.noise)})`);
        } else {
          reporter.event('note', { message: e.message });
          if (!reporter.json) reporter.log(e.message);
        }
      },
    });
    reporter.finish();
    reporter.log(`student written to ${path.resolve(values.out)} (best validation at step ${manifest.training.bestStep}; teacher ${manifest.distillation?.teacher.method})`);
    return ExitCode.ok;
  } catch (err) {
    reporter.finish();
    if (err instanceof TrainingInterrupted) {
      reporter.log(`${err.message.replace('training interrupted', 'distillation interrupted')}`);
      return ExitCode.interrupted;
    }
    throw err;
  } finally {
    interrupt.dispose();
  }
}
