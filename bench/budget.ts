/**
 * The CPU-budget table: every method given the same wall-clock training budget on this machine,
 * the distilled student, and J-invariant-calibrated NLM as the classical row, on BSD68 and Set12
 * at sigma 25 (full sets by default), PSNR and SSIM, several training seeds for the networks.
 *
 *   npm run bench:budget -- --minutes 60 [--seeds 1,2,3] [--methods n2v,noise2self,...] [--limit 68]
 *     [--set12-limit 12] [--teacher laine19] [--no-methods] [--no-distill] [--no-classical] [--quick] [--threads N] [--results-name budget-60m]
 *     [--learning-rate F] [--lr-schedule plateau|constant|cosine] [--mask-fraction F] [--train-engine tfjs|onnx] [--engine auto|onnx|tfjs]
 * The learning rate and schedule are the methods' and the distillation's (teacher and student)
 * alike; the mask fraction and the gradient engine the methods' only (the distillation trains on
 * train's 'auto' engine). --no-methods: the distilled row alone (with --no-distill: the methods alone).
 * --engine: what denoises the test sets, for both (default auto: ONNX Runtime where the model has a
 * graph, as `blindspot denoise`; each result records the engine per row).
 *
 * It composes the two benchmarks that already train and score this way rather than a third copy:
 * bench:methods --minutes M --no-3d once per seed (the classical row with the first seed only: it
 * does not train), and bench:distill --minutes M (teacher and student each get M minutes: the
 * student's row costs 2M of training, which the table says). Each runs as its own process and
 * writes its own results; this script then writes bench/results/<name>.md and <name>-<time>.json
 * with per-seed and mean figures, the machine and its load.
 * The wall clock is the machine's: a loaded machine trains fewer steps, so the load is recorded.
 *
 *   npm run bench:budget -- --minutes 60 --merge a.json,b.json[,...] --results-name budget-60m
 *     one table from results run apart (a seed or a method each): bench/budgetTable.ts
 */
import { spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import { fileURLToPath } from 'node:url';
import os from 'node:os';
import path from 'node:path';
import { PACKAGE_ROOT } from '../core/version.js';
import { benchArgs, machineInfo, writeResult, runBenchmark } from './common.js';
import type { Score } from './testSets.js';
import { budgetMarkdown, mergeBudgetResults, type BudgetResult, type BudgetRow, type StoredBudgetResult } from './budgetTable.js';

interface MethodsRow {
  method: string;
  network?: string;
  bsd68?: Score;
  set12?: Score;
  trainSeconds2d?: number;
  stepsDone2d?: number;
  error?: string;
}
interface MethodsResult {
  methods: MethodsRow[];
  classical: Array<{ denoiser: string; output: string; bsd68?: Score; set12?: Score; seconds: number }>;
  noisy: { bsd68: Score; set12: Score };
  backend: string;
  threads: number;
}
interface DistillResult {
  noisy: { bsd68: Score; set12: Score };
  backend: string;
  threads: number;
  seeds: Array<{ seed: number; teacher?: { bsd68: Score; set12: Score; stepsDone: number; network: string }; student?: { bsd68: Score; set12: Score; stepsDone: number; network: string; megapixelsPerSecond: number }; error?: string }>;
}


function log(message: string): void {
  process.stderr.write(`[${new Date().toISOString().slice(11, 19)}] ${message}\n`);
}

function run(script: string, args: string[]): Promise<number | null> {
  const file = path.join(path.dirname(fileURLToPath(import.meta.url)), script);
  log(`node ${path.relative(PACKAGE_ROOT, file)} ${args.join(' ')}`);
  return new Promise((resolve) => {
    const proc = spawn(process.execPath, [file, ...args], { stdio: ['ignore', 'ignore', 'inherit'] });
    proc.on('close', (code) => resolve(code));
  });
}

async function readLatest<T>(name: string): Promise<T | null> {
  const text = await fs.readFile(path.join(PACKAGE_ROOT, 'bench', 'results', `${name}-latest.json`), 'utf8').catch(() => null);
  return text === null ? null : (JSON.parse(text) as T);
}

async function main(): Promise<void> {
  const args = benchArgs(process.argv.slice(2));
  const minutes = Number(args.get('minutes') ?? NaN);
  if (!(minutes > 0)) throw new Error('bench:budget needs --minutes M (the wall-clock training budget per network)');
  const quick = args.get('quick') === 'true';
  const name = args.get('results-name') ?? `budget-${minutes}m${quick ? '-quick' : ''}`;
  if (!/^[A-Za-z0-9_.-]+$/.test(name)) throw new Error(`--results-name must be a plain file name stem, got '${name}'`);
  if (args.has('merge')) return mergeTables(String(args.get('merge')).split(','), name, minutes);
  const seeds = (args.get('seeds') ?? (quick ? '1' : '1,2,3')).split(',').map(Number);
  for (const s of seeds) if (!Number.isInteger(s)) throw new Error(`--seeds must be integers, got ${args.get('seeds')}`);
  const sets = ['--limit', args.get('limit') ?? (quick ? '2' : '68'), '--set12-limit', args.get('set12-limit') ?? (quick ? '2' : '12')];
  const passed = [
    ...(args.has('threads') ? ['--threads', String(args.get('threads'))] : []),
    ...(args.has('backend') ? ['--backend', String(args.get('backend'))] : []),
    ...(args.has('engine') ? ['--engine', String(args.get('engine'))] : []),
    ...(quick ? ['--quick'] : []),
  ];
  const loadStart = os.loadavg().map((l) => +l.toFixed(2));
  const t0 = performance.now();

  const perSeed = new Map<number, MethodsResult>();
  const recipe = [
    ...(args.has('learning-rate') ? ['--learning-rate', String(args.get('learning-rate'))] : []),
    ...(args.has('lr-schedule') ? ['--lr-schedule', String(args.get('lr-schedule'))] : []),
  ];
  for (const [i, seed] of (args.get('no-methods') === 'true' ? [] : seeds).entries()) {
    const stem = `${name}-methods-seed${seed}`;
    const code = await run('methods.js', [
      '--no-3d',
      '--minutes', String(minutes),
      ...sets,
      '--seed', String(seed),
      ...(args.has('methods') ? ['--methods', String(args.get('methods'))] : []),
      // Calibrated NLM does not train: one run of it is the classical row for every seed
      // (--no-classical: none, e.g. for a second process of the same budget that splits the methods).
      `--classical=${i === 0 && args.get('no-classical') !== 'true' ? 'nlm' : ''}`,
      '--results-name', stem,
      ...passed,
      ...recipe,
      ...(args.has('mask-fraction') ? ['--mask-fraction', String(args.get('mask-fraction'))] : []),
      ...(args.has('train-engine') ? ['--train-engine', String(args.get('train-engine'))] : []),
    ]);
    const result = await readLatest<MethodsResult>(stem);
    if (code !== 0 || result === null) log(`bench:methods seed ${seed} exited with ${code}${result ? ' (its partial results are used)' : ''}`);
    if (result) perSeed.set(seed, result);
  }
  let distill: DistillResult | null = null;
  if (args.get('no-distill') !== 'true') {
    const stem = `${name}-distill`;
    const code = await run('distill.js', ['--minutes', String(minutes), '--seeds', seeds.join(','), '--teacher', args.get('teacher') ?? 'laine19', ...sets, '--results-name', stem, ...passed, ...recipe]);
    distill = await readLatest<DistillResult>(stem);
    if (code !== 0) log(`bench:distill exited with ${code}`);
  }

  const rows = new Map<string, BudgetRow>();
  for (const [seed, result] of perSeed) {
    for (const r of result.methods) {
      const row = rows.get(r.method) ?? { name: r.method, network: r.network ?? '-', perSeed: [] };
      row.perSeed.push({ seed, bsd68: r.bsd68, set12: r.set12, steps: r.stepsDone2d, error: r.error });
      rows.set(r.method, row);
    }
  }
  if (distill) {
    const row: BudgetRow = { name: 'distilled student (teacher: its own budget first)', network: distill.seeds.find((s) => s.student)?.student?.network ?? '-', perSeed: [] };
    for (const s of distill.seeds) row.perSeed.push({ seed: s.seed, bsd68: s.student?.bsd68, set12: s.student?.set12, steps: s.student?.stepsDone, error: s.error });
    rows.set('student', row);
  }
  const first = perSeed.get(seeds[0]);
  const nlm = first?.classical.find((c) => c.denoiser === 'nlm' && c.output === 'invariant');
  const nlmPlain = first?.classical.find((c) => c.denoiser === 'nlm' && c.output === 'plain');
  const result: BudgetResult = {
    minutes,
    seeds,
    quick,
    sets: { bsd68Images: Number(sets[1]), set12Images: Number(sets[3]) },
    backend: first?.backend ?? distill?.backend,
    threads: first?.threads ?? distill?.threads,
    recipe: { learningRate: args.get('learning-rate') ?? '4e-4 (default)', learningRateSchedule: args.get('lr-schedule') ?? 'plateau (default)', ...(args.has('mask-fraction') ? { maskFraction: String(args.get('mask-fraction')) } : {}), trainEngine: args.get('train-engine') ?? 'auto' },
    load: { start: loadStart, end: os.loadavg().map((l) => +l.toFixed(2)) },
    noisy: first?.noisy ?? distill?.noisy,
    rows: [...rows.values()],
    classical: { nlm, nlmPlain },
    wallSeconds: +((performance.now() - t0) / 1000).toFixed(1),
  };
  await writeTable(name, result);
}

/** Writes the table's JSON (with the run's provenance) and its Markdown, bench/results/<name>.md. */
async function writeTable(name: string, result: BudgetResult): Promise<void> {
  const file = await writeResult(name, result as unknown as Record<string, unknown>);
  const markdown = budgetMarkdown(result, path.relative(PACKAGE_ROOT, file), `npm run bench:budget -- ${process.argv.slice(2).join(' ')}`);
  await fs.writeFile(path.join(PACKAGE_ROOT, 'bench', 'results', `${name}.md`), markdown);
  process.stdout.write(markdown);
}

/** --merge a.json,b.json: one table from bench:budget results run apart (bench/budgetTable.ts says which merge). */
async function mergeTables(files: string[], name: string, minutes: number): Promise<void> {
  const inputs = await Promise.all(
    files.map(async (file) => {
      const text = await fs.readFile(file, 'utf8').catch((err: Error) => {
        throw new Error(`${file}: cannot be read (${err.message})`);
      });
      let result: StoredBudgetResult;
      try {
        result = JSON.parse(text) as StoredBudgetResult;
      } catch (err) {
        throw new Error(`${file}: is not JSON (${(err as Error).message})`);
      }
      if (!Array.isArray(result.rows) || typeof result.minutes !== 'number') throw new Error(`${file}: is not a bench:budget result (no rows or minutes)`);
      if (result.minutes !== minutes) throw new Error(`${file}: is a ${result.minutes}-minute table, not --minutes ${minutes}`);
      return { file: path.relative(PACKAGE_ROOT, path.resolve(file)), result };
    }),
  );
  await writeTable(name, mergeBudgetResults(inputs));
}

runBenchmark(main);
