/** `blindspot report <model-dir | output> --out report.html`, and the `--report` option of train and denoise. */
import { ExitCode, UsageError } from '../core/errors.js';
import { writeReport, type GatherOptions } from '../report/index.js';
import { parse } from './options.js';
import type { Reporter } from './progress.js';

export const REPORT_HELP = `Usage: blindspot report <model-dir | denoised-dir | output.zarr | s3://...> --out <report.html> [options]

Writes one self-contained HTML page (no network, no server: open it from disk) about a run:
  - before/after at full resolution on a few tiles the tool picks (brightest, most textured,
    background; seeded), with a split slider, a toggle, zoom, the residual noisy - denoised beside
    them, a z slider for 3D, and the posterior standard deviation when the run wrote one (--uncertainty);
  - training and validation loss against step and time, learning-rate changes marked;
  - the noise-level function of the training images and the denoised inputs (binned variances and
    fitted curves) and, with --reference, PSNR / SSIM against clean images;
  - for a streamed denoise: throughput and ETA per chunk, progress of every shard, input-chunk
    fetches per chunk, peak memory (recorded in the output by 'blindspot denoise'; a sharded run's
    report needs nothing but its output, once the shards are done);
  - provenance: commands, model sha256, versions, backend, machine.
Numbers come from the run's own records (blindspot.json, <output>.noise.json, the OME-Zarr's metadata).
The same page is written by 'train --report', 'denoise --report' and 'demo' (report.html).

Options:
  --out <file.html>         the page to write (required; an existing file is replaced only if it is a blindspot report)
  --model <dir>             the model folder, for a folder of denoised files (a streamed output names its own)
  --reference <dir|file>    clean images matched to the inputs by file name: PSNR / SSIM (repeatable)
  --seed N                  seed of the tile choice (default 1)
  --s3-endpoint URL         S3-compatible endpoint for s3:// outputs and inputs

Examples:
  blindspot report models/conv --out conv.html
  blindspot report data/denoised --model models/conv --reference data/clean --out denoised.html
  blindspot report s3://lab/denoised/vol.zarr --out vol-report.html`;

export async function runReport(args: string[]): Promise<number> {
  const { values, positionals } = parse(
    args,
    {
      out: { type: 'string' },
      model: { type: 'string' },
      reference: { type: 'string', multiple: true },
      seed: { type: 'string' },
      's3-endpoint': { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
    true,
  );
  if (values.help) {
    process.stdout.write(REPORT_HELP + '\n');
    return ExitCode.ok;
  }
  if (positionals.length !== 1) throw new UsageError('report takes one model folder or output (blindspot report --help)');
  if (!values.out) throw new UsageError('report needs --out <report.html>');
  const seed = values.seed === undefined ? undefined : Number(values.seed);
  if (seed !== undefined && !Number.isInteger(seed)) throw new UsageError(`--seed must be an integer, got '${values.seed}'`);
  const written = await writeReport(positionals[0], values.out, {
    modelDir: values.model,
    reference: values.reference,
    seed,
    s3: values['s3-endpoint'] ? { endpoint: values['s3-endpoint'] } : undefined,
  });
  process.stdout.write(`report written to ${written.file} (${(written.bytes / 2 ** 20).toFixed(2)} MiB)\n`);
  return ExitCode.ok;
}

/** The `--report <file>` of train and denoise: written after the run, its path logged (and a 'report' event with --json). */
export async function reportAfterRun(target: string, out: string, reporter: Reporter, opts: GatherOptions): Promise<void> {
  const written = await writeReport(target, out, opts);
  reporter.event('report', { file: written.file, bytes: written.bytes });
  if (!reporter.json) reporter.log(`report written to ${written.file}`);
}
