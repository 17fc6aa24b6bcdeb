/**
 * Distillation at the bench:methods budget: a teacher (laine19 or dbsn, trained on Train400 at
 * sigma 25 exactly as bench:methods trains it) is distilled into a plain U-Net student
 * (pipeline/distill.ts) on noisy Train400 images; both are scored on the first BSD68 and Set12
 * images (bench/testSets.ts: PSNR / SSIM) and timed denoising them (Mpx/s, same process, same
 * backend, teacher and student one after the other), for each training seed.
 *
 *   npm run bench:distill -- [--teacher laine19|dbsn] [--steps 120] [--student-steps N] [--batch-size 4]
 *     [--limit 6] [--set12-limit 4] [--train-limit 400] [--distill-limit 40] [--prior learned|nlf|gaussian:25]
 *     [--seeds 1,2,3] [--quick] [--backend auto] [--threads N] [--results-name distill]
 *     [--minutes M] [--student-minutes M] [--learning-rate F] [--lr-schedule plateau|constant|cosine]
 *     [--engine auto|onnx|tfjs]
 *
 * --steps: the teacher's steps (bench:methods' default 120 at batch 4); --student-steps: the
 * student's (default: the same). --distill-limit: Train400 images the teacher denoises for the
 * student's targets (the first N of the training images; the teacher's pass over all 400 would
 * cost more than its training at this budget). --quick: a smoke run of the harness (4 steps, 2+2
 * test images, 20 training images, 4 distillation images).
 * --minutes / --student-minutes: wall-clock training budgets (train --time-budget) instead of step
 * counts (--steps then only caps them); the student's budget defaults to the teacher's. bench:budget
 * uses them for its distilled row. --learning-rate / --lr-schedule: the recipe of teacher and student
 * alike (unset: train's defaults), so that bench:budget's student row shares its methods' recipe.
 * --engine: what denoises the test sets (default auto, as `blindspot denoise`: ONNX Runtime where the
 * model has a graph); teacher and student on the same one, so their Mpx/s compare.
 * Writes bench/results/<name>-<time>.json, <name>-latest.json and <name>.md.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { initBackend, type BackendChoice } from '../backend/select.js';
import { Rng } from '../core/rng.js';
import { addGaussianNoise } from '../core/synthetic.js';
import { PACKAGE_ROOT } from '../core/version.js';
import { parseNoiseSpec, type NoiseSpec } from '../models/bayes.js';
import { describeNetwork } from '../models/network.js';
import { distillModel } from '../pipeline/distill.js';
import { trainModel, type NamedVolume, type TrainOptions } from '../pipeline/train.js';
import { expandInputs, readImage } from '../storage/index.js';
import { benchArgs, machineInfo, writeResult, runBenchmark } from './common.js';
import { benchEngine, benchmarkDataDirs, denoiseTestSets, loadTestSet, score, SIGMA, type Score, type TestImage } from './testSets.js';
import type { EngineChoice } from '../engines/engine.js';

interface ModelResult {
  network: string;
  trainSeconds: number;
  stepsDone: number;
  bsd68: Score;
  set12: Score;
  /** Megapixels per second denoising the BSD68 + Set12 images (whole images, default tiling). */
  megapixelsPerSecond: number;
  /** The engine that denoised them (--engine; auto: ONNX Runtime where the model has a graph). */
  engine: string;
  denoiseSeconds: number;
}

interface SeedRow {
  seed: number;
  teacher?: ModelResult;
  student?: ModelResult & { teacherPassSeconds: number };
  error?: string;
}

function log(message: string): void {
  process.stderr.write(`[${new Date().toISOString().slice(11, 19)}] ${message}\n`);
}

function loadNow(): number[] {
  return os.loadavg().map((l) => +l.toFixed(2));
}

async function evaluate(dir: string, sets: { bsd68: TestImage[]; set12: TestImage[] }, engine: { engine: EngineChoice; threads?: number }): Promise<Pick<ModelResult, 'bsd68' | 'set12' | 'megapixelsPerSecond' | 'denoiseSeconds' | 'network' | 'engine'>> {
  const result = await denoiseTestSets(dir, sets, engine);
  const seconds = result.seconds.bsd68 + result.seconds.set12;
  return {
    network: describeNetwork(result.manifest.network),
    bsd68: result.scores.bsd68,
    set12: result.scores.set12,
    megapixelsPerSecond: +((result.pixels.bsd68 + result.pixels.set12) / 1e6 / seconds).toFixed(4),
    denoiseSeconds: +seconds.toFixed(1),
    engine: result.engine,
  };
}

async function main(): Promise<void> {
  const args = benchArgs(process.argv.slice(2));
  const quick = args.get('quick') === 'true';
  const teacherMethod = args.get('teacher') ?? 'laine19';
  if (teacherMethod !== 'laine19' && teacherMethod !== 'dbsn') throw new Error(`--teacher must be laine19 or dbsn, got '${teacherMethod}'`);
  const minutes = args.has('minutes') ? Number(args.get('minutes')) : undefined;
  const studentMinutes = args.has('student-minutes') ? Number(args.get('student-minutes')) : minutes;
  for (const m of [minutes, studentMinutes]) if (m !== undefined && !(m > 0)) throw new Error(`--minutes and --student-minutes must be positive`);
  // A wall-clock budget leaves the step count open unless --steps / --student-steps cap it.
  const steps = args.has('steps') ? Number(args.get('steps')) : minutes !== undefined ? undefined : quick ? 4 : 120;
  const studentSteps = args.has('student-steps') ? Number(args.get('student-steps')) : studentMinutes !== undefined ? undefined : steps;
  const learningRate = args.has('learning-rate') ? Number(args.get('learning-rate')) : undefined;
  if (learningRate !== undefined && !(learningRate > 0)) throw new Error(`--learning-rate must be positive, got ${args.get('learning-rate')}`);
  const learningRateSchedule = args.get('lr-schedule') as TrainOptions['learningRateSchedule'];
  const recipe = { ...(learningRate !== undefined ? { learningRate } : {}), ...(learningRateSchedule !== undefined ? { learningRateSchedule } : {}) };
  const engineChoice = benchEngine(args.get('engine'));
  const every = (n: number | undefined): number | undefined => (n === undefined ? undefined : Math.max(1, Math.floor(n / 2)));
  const batchSize = Number(args.get('batch-size') ?? 4);
  const limit = Number(args.get('limit') ?? (quick ? 2 : 6));
  const set12Limit = Number(args.get('set12-limit') ?? (quick ? 2 : 4));
  const trainLimit = Number(args.get('train-limit') ?? (quick ? 20 : 400));
  const distillLimit = Number(args.get('distill-limit') ?? (quick ? 4 : 40));
  const seeds = (args.get('seeds') ?? '1,2,3').split(',').map(Number);
  for (const s of seeds) if (!Number.isInteger(s)) throw new Error(`--seeds must be integers, got ${args.get('seeds')}`);
  const priorArg = args.get('prior') ?? 'learned';
  const prior: NoiseSpec | 'learned' | 'nlf' = priorArg === 'learned' || priorArg === 'nlf' ? priorArg : parseNoiseSpec(priorArg);
  const threads = args.has('threads') ? Number(args.get('threads')) : undefined;
  const resultsName = args.get('results-name') ?? 'distill';
  if (!/^[A-Za-z0-9_.-]+$/.test(resultsName)) throw new Error(`--results-name must be a plain file name stem, got '${resultsName}'`);

  const { trainDir, bsdDir, set12Dir } = await benchmarkDataDirs('bench:distill');
  const backend = await initBackend({ backend: (args.get('backend') ?? 'auto') as BackendChoice, threads });
  const loadAtStart = loadNow();
  log(`backend ${backend.name}, ${backend.threads} thread(s); teacher ${teacherMethod} ${minutes ?? '-'} min / ${steps ?? '-'} steps, student ${studentMinutes ?? '-'} min / ${studentSteps ?? '-'} steps, batch ${batchSize}, learning rate ${learningRate ?? 'default'} (${learningRateSchedule ?? 'default'} schedule); seeds ${seeds.join(',')}; load ${loadAtStart.join(' ')}`);
  const t0 = performance.now();

  // The data of bench:methods: Train400 with the same seeded noise draw, the same test sets and draws.
  const trainFiles = (await expandInputs([trainDir])).slice(0, trainLimit);
  const firstDraw = new Rng(25);
  const noisyTrain: NamedVolume[] = [];
  for (const f of trainFiles) {
    const clean = await readImage(f);
    noisyTrain.push({ volume: { data: addGaussianNoise(clean.data, SIGMA, firstDraw), shape: clean.shape, sampleType: 'float32' }, name: f });
  }
  const sets = { bsd68: await loadTestSet(bsdDir, limit, 68), set12: await loadTestSet(set12Dir, set12Limit, 12) };
  const noisy = { bsd68: score(sets.bsd68, sets.bsd68.map((i) => i.noisy)), set12: score(sets.set12, sets.set12.map((i) => i.noisy)) };

  const rows: SeedRow[] = [];
  for (const seed of seeds) {
    const row: SeedRow = { seed };
    const work = await fs.mkdtemp(path.join(os.tmpdir(), 'blindspot-bench-distill-'));
    try {
      const teacherDir = path.join(work, 'teacher');
      log(`seed ${seed}: training the ${teacherMethod} teacher on ${noisyTrain.length} Train400 images`);
      const teacherManifest = await trainModel({
        volumes: noisyTrain,
        out: teacherDir,
        method: teacherMethod,
        steps,
        ...(minutes !== undefined ? { timeBudgetSeconds: minutes * 60 } : {}),
        batchSize,
        patchShape: [64, 64],
        seed,
        ...recipe,
        backend,
        validateEvery: every(steps),
        valPatches: 16,
        prior,
        // As bench:methods: the workers' noise fits only where the teacher's loss needs them.
        noiseFits: teacherMethod === 'dbsn' && prior === 'nlf',
        command: ['bench:distill', 'teacher'],
      });
      row.teacher = { ...(await evaluate(teacherDir, sets, { engine: engineChoice, threads })), trainSeconds: +teacherManifest.training.wallSeconds.toFixed(1), stepsDone: teacherManifest.training.stepsDone };
      log(`seed ${seed}: teacher BSD68 ${row.teacher.bsd68.psnr} dB, Set12 ${row.teacher.set12.psnr} dB, ${row.teacher.megapixelsPerSecond} Mpx/s`);

      const studentDir = path.join(work, 'student');
      let teacherPassSeconds = 0;
      const studentManifest = await distillModel({
        teacher: teacherDir,
        volumes: noisyTrain.slice(0, distillLimit),
        out: studentDir,
        steps: studentSteps,
        ...(studentMinutes !== undefined ? { timeBudgetSeconds: studentMinutes * 60 } : {}),
        batchSize,
        patchShape: [64, 64],
        seed,
        ...recipe,
        backend,
        validateEvery: every(studentSteps),
        valPatches: 16,
        command: ['bench:distill', 'student'],
        onEvent: (e) => {
          if (e.type === 'teacher-image') teacherPassSeconds += e.seconds;
        },
      });
      row.student = {
        ...(await evaluate(studentDir, sets, { engine: engineChoice, threads })),
        trainSeconds: +studentManifest.training.wallSeconds.toFixed(1),
        stepsDone: studentManifest.training.stepsDone,
        teacherPassSeconds: +teacherPassSeconds.toFixed(1),
      };
      log(`seed ${seed}: student BSD68 ${row.student.bsd68.psnr} dB, Set12 ${row.student.set12.psnr} dB, ${row.student.megapixelsPerSecond} Mpx/s`);
    } catch (err) {
      row.error = (err as Error).message;
      log(`seed ${seed}: FAILED: ${row.error}`);
    }
    await fs.rm(work, { recursive: true, force: true });
    rows.push(row);
  }

  const loadAtEnd = loadNow();
  const budget = { teacher: teacherMethod, prior: priorArg, teacherSteps: steps, studentSteps, teacherMinutes: minutes, studentMinutes, batchSize, learningRate: learningRate ?? 'default', learningRateSchedule: learningRateSchedule ?? 'default', engine: engineChoice, patch: [64, 64], trainImages: noisyTrain.length, distillImages: Math.min(distillLimit, noisyTrain.length), bsd68Images: sets.bsd68.length, set12Images: sets.set12.length, seeds, quick };
  const result = { backend: backend.name, threads: backend.threads, budget, load: { start: loadAtStart, end: loadAtEnd }, noisy, seeds: rows, wallSeconds: +((performance.now() - t0) / 1000).toFixed(1) };
  const file = await writeResult(resultsName, result);
  const markdown = distillMarkdown(result, path.relative(PACKAGE_ROOT, file));
  await fs.writeFile(path.join(PACKAGE_ROOT, 'bench', 'results', `${resultsName}.md`), markdown);
  process.stdout.write(markdown);
  log(`written ${file} and bench/results/${resultsName}.md`);
}

/** The engines the rows denoised on ('onnx', or 'onnx (teacher), tfjs (student)' where they differ). */
function engines(rows: readonly SeedRow[]): string {
  const names = new Set(rows.flatMap((r) => [r.teacher?.engine, r.student?.engine]).filter((e) => e !== undefined));
  return names.size === 0 ? '-' : [...names].join(' and ');
}

/** '30 min (at most 400 steps)', '30 min' or '400 steps'. */
function budgetText(minutes: number | undefined, steps: number | undefined): string {
  if (minutes === undefined) return `${steps} steps`;
  return `${minutes} min of training${steps !== undefined ? ` (at most ${steps} steps)` : ''}`;
}

function distillMarkdown(
  result: { backend: string; threads: number; budget: Record<string, unknown> & { teacher: string; teacherSteps?: number; studentSteps?: number; teacherMinutes?: number; studentMinutes?: number; batchSize: number; trainImages: number; distillImages: number; bsd68Images: number; set12Images: number; quick: boolean }; load: { start: number[]; end: number[] }; noisy: { bsd68: Score; set12: Score }; seeds: SeedRow[]; wallSeconds: number },
  jsonFile: string,
): string {
  const m = machineInfo();
  const b = result.budget;
  const cell = (s: Score | undefined): string => (s ? `${s.psnr.toFixed(2)} / ${s.ssim.toFixed(3)}` : '-');
  const lines = [
    '# bench:distill',
    '',
    `Command: \`npm run bench:distill -- ${process.argv.slice(2).join(' ')}\`  `,
    `Date: ${new Date().toISOString()}; results: \`${jsonFile}\`  `,
    `Machine: ${m.cpu}, ${m.logicalCores} logical cores, ${m.memoryGiB} GiB, ${m.platform}, Node ${m.node}; load average (1/5/15 min) ${result.load.start.join(' ')} at the start, ${result.load.end.join(' ')} at the end (shared with other jobs)  `,
    `Backend: ${result.backend}, ${result.threads} thread(s)  `,
    `Budget${b.quick ? ' (--quick: a smoke run of the harness, not a result)' : ''}: teacher ${b.teacher} ${budgetText(b.teacherMinutes, b.teacherSteps)}, student U-Net ${budgetText(b.studentMinutes, b.studentSteps)}, batch ${b.batchSize}, 64x64 patches, learning rate ${String(b.learningRate ?? 'default')} (${String(b.learningRateSchedule ?? 'default')} schedule); ` +
      `teacher trained on ${b.trainImages} Train400 images (sigma 25, seeded); student on the teacher's output for the first ${b.distillImages} of them; ` +
      `BSD68: first ${b.bsd68Images} images, Set12: first ${b.set12Images}. Total wall time ${(result.wallSeconds / 60).toFixed(1)} min.`,
    '',
    `PSNR (dB, peak 255 per image, averaged) / SSIM. Mpx/s: denoising the BSD68 + Set12 images whole, teacher then student in the same process, on ${engines(result.seeds)}; ` +
      'on a loaded machine the ratio means more than either number.',
    '',
    `| seed | teacher BSD68 | student BSD68 | teacher Set12 | student Set12 | student - teacher (BSD68 / Set12 dB) | teacher Mpx/s | student Mpx/s | speed-up | teacher train s | teacher pass s | student train s |`,
    '|---|---|---|---|---|---|---|---|---|---|---|---|',
    `| noisy input | ${cell(result.noisy.bsd68)} | | ${cell(result.noisy.set12)} | | | | | | | | |`,
  ];
  for (const r of result.seeds) {
    const t = r.teacher;
    const s = r.student;
    if (!t || !s) {
      lines.push(`| ${r.seed} | ${cell(t?.bsd68)} | failed: ${(r.error ?? '').replace(/\|/g, '\\|').slice(0, 120)} | ${cell(t?.set12)} | | | | | | | | |`);
      continue;
    }
    const gap = `${(s.bsd68.psnr - t.bsd68.psnr).toFixed(2)} / ${(s.set12.psnr - t.set12.psnr).toFixed(2)}`;
    lines.push(
      `| ${r.seed} | ${cell(t.bsd68)} | ${cell(s.bsd68)} | ${cell(t.set12)} | ${cell(s.set12)} | ${gap} | ${t.megapixelsPerSecond} | ${s.megapixelsPerSecond} | ${(s.megapixelsPerSecond / t.megapixelsPerSecond).toFixed(1)}x | ${t.trainSeconds} | ${s.teacherPassSeconds} | ${s.trainSeconds} |`,
    );
  }
  const done = result.seeds.filter((r) => r.teacher && r.student);
  if (done.length > 0) {
    const mean = (f: (r: SeedRow) => number): number => done.reduce((a, r) => a + f(r), 0) / done.length;
    lines.push(
      '',
      `Mean over ${done.length} seed(s): student - teacher ${mean((r) => r.student!.bsd68.psnr - r.teacher!.bsd68.psnr).toFixed(2)} dB (BSD68), ` +
        `${mean((r) => r.student!.set12.psnr - r.teacher!.set12.psnr).toFixed(2)} dB (Set12); speed-up ${mean((r) => r.student!.megapixelsPerSecond / r.teacher!.megapixelsPerSecond).toFixed(1)}x. ` +
        'Targets of issue 19: within 0.2 dB of the teacher, >= 3x its Mpx/s.',
    );
  }
  lines.push('', `Networks: teacher ${done[0]?.teacher?.network ?? '-'}; student ${done[0]?.student?.network ?? '-'}.`, '');
  return lines.join('\n');
}

runBenchmark(main);
