#!/usr/bin/env node
/**
 * The `blindspot` command. It parses options and calls pipeline functions; it holds no logic of
 * its own beyond mapping errors to exit codes.
 */
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { debugWanted, ExitCode, exitWithOutcome, reportFailure, UsageError } from '../core/errors.js';
import { VERSION } from '../core/version.js';
import { evaluateFolders } from '../pipeline/evaluate.js';
import { runDemo } from '../pipeline/demo.js';
import { runTrain, TRAIN_HELP } from './train.js';
import { DENOISE_HELP, runDenoise } from './denoise.js';
import { PLAN_HELP, runPlan } from './plan.js';
import { runWatch, WATCH_HELP } from './watch.js';
import { CALIBRATE_HELP, runCalibrate } from './calibrate.js';
import { EXPORT_HELP, runExport } from './export.js';
import { DISTILL_HELP, runDistill } from './distill.js';
import { runNoise } from './noise.js';
import { REPORT_HELP, runReport } from './report.js';
import { commonOptions, intOption, numberOption, parse, setUp } from './options.js';

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
  train: TRAIN_HELP,
  denoise: DENOISE_HELP,
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
small 3D Noise2Self network briefly, denoises it, prints PSNR of noisy and denoised against the truth,
and writes a before/after montage, a loss curve and an HTML run report, report.html (default folder:
demo-output).`,
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
