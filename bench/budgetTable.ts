/**
 * bench:budget's table: its result record, its Markdown, and the merge of results run apart. The
 * 3-seed table over every method is about 36 hours of a 2-core machine, so it is built from runs
 * of a seed or a method each, on different days; a merge takes only results of one protocol
 * (budget, sets, backend, threads, recipe, train engine) and lists where each came from (commit, date, load).
 */
import { machineInfo } from './common.js';
import type { Score } from './testSets.js';

/** One table row: a method (or the student) over seeds. */
export interface BudgetRow {
  name: string;
  network: string;
  perSeed: Array<{ seed: number; bsd68?: Score; set12?: Score; steps?: number; error?: string }>;
}

export interface BudgetResult {
  minutes: number;
  seeds: number[];
  quick: boolean;
  sets: { bsd68Images: number; set12Images: number };
  backend?: string;
  threads?: number;
  /** maskFraction: the masked methods' (absent: the default, 0.015); trainEngine absent: results from before it existed (tfjs). */
  recipe: { learningRate: string; learningRateSchedule: string; maskFraction?: string; trainEngine?: string };
  load: { start: number[]; end: number[] };
  noisy?: { bsd68: Score; set12: Score };
  rows: BudgetRow[];
  classical: { nlm?: { bsd68?: Score; set12?: Score; seconds: number }; nlmPlain?: { bsd68?: Score; set12?: Score } };
  wallSeconds: number;
  /** A merged table: the results it was made of. */
  sources?: BudgetSource[];
}

/** A result as writeResult stored it: the benchmark's fields and the run's provenance. */
export type StoredBudgetResult = BudgetResult & { commit?: string; date?: string; scheduling?: Record<string, unknown> };

export interface BudgetSource {
  file: string;
  commit?: string;
  date?: string;
  seeds: number[];
  rows: string[];
  load: { start: number[]; end: number[] };
  scheduling?: Record<string, unknown>;
}

function maskFractionOf(r: BudgetResult): string {
  return r.recipe.maskFraction ?? '0.015 (default)';
}

/** The fields two results must agree on to be one table, as text for the message. */
function protocolOf(r: BudgetResult): Record<string, string> {
  return {
    minutes: String(r.minutes),
    quick: String(r.quick),
    sets: `BSD68 ${r.sets.bsd68Images}, Set12 ${r.sets.set12Images}`,
    backend: `${r.backend ?? '-'}, ${r.threads ?? '-'} thread(s)`,
    'learning rate': r.recipe.learningRate,
    'learning-rate schedule': r.recipe.learningRateSchedule,
    'mask fraction': maskFractionOf(r),
    'train engine': r.recipe.trainEngine ?? 'tfjs',
  };
}

/**
 * One table from results run apart: rows of the same method joined seed by seed. Refuses results of
 * another protocol, a method whose network differs between results, and a seed of a method given twice.
 */
export function mergeBudgetResults(inputs: ReadonlyArray<{ file: string; result: StoredBudgetResult }>): BudgetResult {
  if (inputs.length < 2) throw new Error(`--merge needs at least two results, got ${inputs.length}`);
  const [first] = inputs;
  const expected = protocolOf(first.result);
  const rows = new Map<string, BudgetRow>();
  const rowSource = new Map<string, string>();
  const merged: BudgetResult = {
    ...first.result,
    seeds: [],
    rows: [],
    classical: {},
    load: first.result.load,
    wallSeconds: 0,
    sources: [],
  };
  for (const { file, result } of inputs) {
    const protocol = protocolOf(result);
    for (const [field, value] of Object.entries(expected)) {
      if (protocol[field] !== value) throw new Error(`${file}: its ${field} is ${protocol[field]}, ${first.file}'s is ${value}: only results of one protocol merge into one table`);
    }
    for (const row of result.rows) {
      const mergedRow = rows.get(row.name) ?? { name: row.name, network: row.network, perSeed: [] };
      if (mergedRow.network !== row.network) throw new Error(`${file}: ${row.name} trained ${row.network}, ${rowSource.get(row.name)} trained ${mergedRow.network}: not one row`);
      for (const s of row.perSeed) {
        const key = `${row.name}/${s.seed}`;
        if (rowSource.has(key)) throw new Error(`${file}: ${row.name} seed ${s.seed} is in ${rowSource.get(key)} too: a seed counts once`);
        rowSource.set(key, file);
        mergedRow.perSeed.push(s);
      }
      rowSource.set(row.name, rowSource.get(row.name) ?? file);
      rows.set(row.name, mergedRow);
    }
    merged.classical.nlm ??= result.classical.nlm;
    merged.classical.nlmPlain ??= result.classical.nlmPlain;
    merged.noisy ??= result.noisy;
    merged.wallSeconds += result.wallSeconds;
    merged.sources!.push({
      file,
      commit: result.commit,
      date: result.date,
      seeds: result.seeds,
      rows: result.rows.map((r) => r.name),
      load: result.load,
      ...(result.scheduling ? { scheduling: result.scheduling } : {}),
    });
  }
  for (const row of rows.values()) row.perSeed.sort((a, b) => a.seed - b.seed);
  merged.rows = [...rows.values()];
  merged.seeds = [...new Set(merged.rows.flatMap((r) => r.perSeed.map((s) => s.seed)))].sort((a, b) => a - b);
  return merged;
}

const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length;

/** The table as Markdown, with the machine, its load (per source for a merged table) and the issue's goals. */
export function budgetMarkdown(result: BudgetResult, jsonFile: string, command: string): string {
  const m = machineInfo();
  const fmt = (xs: Array<Score | undefined>, key: 'psnr' | 'ssim'): string => {
    const got = xs.filter((s): s is Score => s !== undefined).map((s) => s[key]);
    if (got.length === 0) return '-';
    const digits = key === 'psnr' ? 2 : 3;
    return got.length === 1 ? got[0].toFixed(digits) : `${mean(got).toFixed(digits)} (${got.map((g) => g.toFixed(digits)).join(', ')})`;
  };
  const loadLine = result.sources
    ? `merged from ${result.sources.length} runs (below)`
    : `load average (1/5/15 min) ${result.load.start.join(' ')} at the start, ${result.load.end.join(' ')} at the end`;
  const lines = [
    '# bench:budget',
    '',
    `Command: \`${command}\`  `,
    `Date: ${new Date().toISOString()}; results: \`${jsonFile}\`  `,
    `Machine: ${m.cpu}, ${m.logicalCores} logical cores, ${m.memoryGiB} GiB, ${m.platform}, Node ${m.node}; ${loadLine}  `,
    `Backend: ${result.backend ?? '-'}, ${result.threads ?? '-'} thread(s)  `,
    `Budget${result.quick ? ' (--quick: a smoke run of the harness, not a result)' : ''}: ${result.minutes} min of wall-clock training per network (validation included), batch 4, 64x64 patches, ` +
      `Adam at ${result.recipe.learningRate}, learning-rate schedule ${result.recipe.learningRateSchedule}, masked methods' mask fraction ${maskFractionOf(result)}, gradients on ${result.recipe.trainEngine ?? 'tfjs'}, ` +
      `Train400 at sigma 25; BSD68 first ${result.sets.bsd68Images}, Set12 first ${result.sets.set12Images}; seeds ${result.seeds.join(', ')}. ` +
      (result.rows.some((r) => r.name.startsWith('distilled student'))
        ? `The distilled student trains ${result.minutes} min on the output of a teacher that trained ${result.minutes} min first (2x the budget in all). `
        : '') +
      `Total wall time ${(result.wallSeconds / 60).toFixed(1)} min.`,
    '',
    'PSNR (dB, peak 255 per image, averaged) and SSIM: mean over seeds (each seed in brackets); steps: what the budget allowed per seed.',
    '',
    '| method | network | BSD68 PSNR | BSD68 SSIM | Set12 PSNR | Set12 SSIM | steps |',
    '|---|---|---|---|---|---|---|',
    `| noisy input | - | ${fmt([result.noisy?.bsd68], 'psnr')} | ${fmt([result.noisy?.bsd68], 'ssim')} | ${fmt([result.noisy?.set12], 'psnr')} | ${fmt([result.noisy?.set12], 'ssim')} | - |`,
  ];
  for (const r of result.rows) {
    const b = r.perSeed.map((s) => s.bsd68);
    const s12 = r.perSeed.map((s) => s.set12);
    const failed = r.perSeed.filter((s) => s.error && !s.bsd68).map((s) => `seed ${s.seed} failed`);
    lines.push(`| ${r.name} | ${r.network} | ${fmt(b, 'psnr')} | ${fmt(b, 'ssim')} | ${fmt(s12, 'psnr')} | ${fmt(s12, 'ssim')} | ${r.perSeed.map((s) => s.steps ?? '-').join(', ')}${failed.length ? `; ${failed.join(', ')}` : ''} |`);
  }
  const { nlm, nlmPlain } = result.classical;
  if (nlm) lines.push(`| nlm, J-invariant calibrated per image (no training) | - | ${fmt([nlm.bsd68], 'psnr')} | ${fmt([nlm.bsd68], 'ssim')} | ${fmt([nlm.set12], 'psnr')} | ${fmt([nlm.set12], 'ssim')} | - |`);
  if (nlmPlain) lines.push(`| nlm, same parameters, plain output | - | ${fmt([nlmPlain.bsd68], 'psnr')} | ${fmt([nlmPlain.bsd68], 'ssim')} | ${fmt([nlmPlain.set12], 'psnr')} | ${fmt([nlmPlain.set12], 'ssim')} | - |`);
  // The issue's goals, checked on the means.
  const meanPsnr = (r: BudgetRow): number => mean(r.perSeed.filter((s) => s.bsd68).map((s) => s.bsd68!.psnr));
  const scored = result.rows.filter((r) => r.perSeed.some((s) => s.bsd68) && r.name !== 'n2n' && r.name !== 'care');
  const best = [...scored].sort((a, b) => meanPsnr(b) - meanPsnr(a))[0];
  const classicalBest = Math.max(nlm?.bsd68?.psnr ?? -Infinity, nlmPlain?.bsd68?.psnr ?? -Infinity);
  const n2v = result.rows.find((r) => r.name === 'n2v');
  lines.push('');
  if (best && Number.isFinite(classicalBest)) {
    lines.push(`Best self-supervised network on BSD68: ${best.name} ${meanPsnr(best).toFixed(2)} dB against calibrated NLM's ${classicalBest.toFixed(2)} dB: ${meanPsnr(best) >= classicalBest ? 'the network wins' : 'NLM wins'} at this budget.`);
  }
  if (!nlm && !nlmPlain) lines.push('No classical row in this table (it comes with the methods: --no-classical or --no-methods left it out).');
  if (n2v && n2v.perSeed.some((s) => s.bsd68)) lines.push(`n2v: ${meanPsnr(n2v).toFixed(2)} dB on BSD68 (goal at 60 minutes: 27.0).`);
  lines.push('', 'n2n and care train on a second noise draw and on clean targets: paired references, not self-supervised, left out of the comparison line.', '');
  if (result.sources) {
    lines.push('Merged from:', '');
    for (const s of result.sources) {
      lines.push(`- \`${s.file}\`: ${s.rows.join(', ')}, seeds ${s.seeds.join(', ')}; commit ${s.commit ?? '-'}, ${s.date ?? '-'}; load ${s.load.start.join(' ')} at the start, ${s.load.end.join(' ')} at the end`);
    }
    lines.push('');
  }
  return lines.join('\n');
}
