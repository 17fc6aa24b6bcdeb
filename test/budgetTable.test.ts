/**
 * bench:budget's merge: a table built from runs of one seed or one method each joins them seed by
 * seed, and refuses what is not one protocol or counts a seed twice.
 */
import { describe, expect, it } from 'vitest';
import { budgetMarkdown, mergeBudgetResults, type StoredBudgetResult } from '../bench/budgetTable.js';
import type { Score } from '../bench/testSets.js';

const score = (psnr: number, ssim: number): Score => ({ psnr, ssim, images: 68, offset: 0, psnrWithoutOffset: psnr });

function run(rows: StoredBudgetResult['rows'], extra: Partial<StoredBudgetResult> = {}): StoredBudgetResult {
  return {
    minutes: 60,
    seeds: [...new Set(rows.flatMap((r) => r.perSeed.map((s) => s.seed)))],
    quick: false,
    sets: { bsd68Images: 68, set12Images: 12 },
    backend: 'wasm',
    threads: 1,
    recipe: { learningRate: '1e-3', learningRateSchedule: 'cosine' },
    load: { start: [1, 1, 1], end: [2, 2, 2] },
    noisy: { bsd68: score(20.17, 0.38), set12: score(20.17, 0.36) },
    rows,
    classical: {},
    wallSeconds: 3600,
    commit: 'abc1234',
    date: '2026-12-06T20:00:00Z',
    ...extra,
  };
}

const unet = 'U-Net depth 2 / 32f, no batch norm';

describe('bench:budget --merge', () => {
  const seed1 = run([{ name: 'n2v', network: unet, perSeed: [{ seed: 1, bsd68: score(26.75, 0.723), set12: score(27.62, 0.779), steps: 8860 }] }], {
    classical: { nlmPlain: { bsd68: score(27.38, 0.711), set12: score(28.11, 0.737) } },
  });
  const seed2 = run([
    { name: 'n2v', network: unet, perSeed: [{ seed: 2, bsd68: score(26.55, 0.713), set12: score(27.4, 0.77), steps: 8700 }] },
    { name: 'neighbor2neighbor', network: unet, perSeed: [{ seed: 2, bsd68: score(27.6, 0.75), set12: score(28.3, 0.78), steps: 17000 }] },
  ]);

  it('joins the rows of one method seed by seed; the mean, the classical row and each source are in the table', () => {
    const merged = mergeBudgetResults([
      { file: 'b.json', result: seed2 },
      { file: 'a.json', result: seed1 },
    ]);
    expect(merged.seeds).toEqual([1, 2]);
    const n2v = merged.rows.find((r) => r.name === 'n2v')!;
    expect(n2v.perSeed.map((s) => s.seed)).toEqual([1, 2]);
    expect(merged.rows.find((r) => r.name === 'neighbor2neighbor')!.perSeed).toHaveLength(1);
    expect(merged.classical.nlmPlain?.bsd68?.psnr).toBe(27.38);
    expect(merged.wallSeconds).toBe(7200);
    const md = budgetMarkdown(merged, 'bench/results/m.json', 'npm run bench:budget -- --merge b.json,a.json');
    expect(md).toContain('| n2v | U-Net depth 2 / 32f, no batch norm | 26.65 (26.75, 26.55) |');
    expect(md).toContain('8860, 8700');
    expect(md).toContain('Best self-supervised network on BSD68: neighbor2neighbor 27.60 dB');
    expect(md).toContain('the network wins');
    expect(md).toContain('- `a.json`: n2v, seeds 1; commit abc1234');
    expect(md).toContain('merged from 2 runs');
  });

  it('refuses another protocol, another network under one name, a seed given twice, and a single result', () => {
    expect(() => mergeBudgetResults([{ file: 'a.json', result: seed1 }, { file: 'c.json', result: { ...seed2, threads: 2 } }])).toThrow(/c\.json: its backend is wasm, 2 thread\(s\), a\.json's is wasm, 1 thread\(s\)/);
    expect(() => mergeBudgetResults([{ file: 'a.json', result: seed1 }, { file: 'c.json', result: { ...seed2, recipe: { learningRate: '4e-4 (default)', learningRateSchedule: 'cosine' } } }])).toThrow(/learning rate/);
    const otherNet = run([{ name: 'n2v', network: 'U-Net depth 3 / 32f', perSeed: [{ seed: 3, bsd68: score(26, 0.7) }] }]);
    expect(() => mergeBudgetResults([{ file: 'a.json', result: seed1 }, { file: 'd.json', result: otherNet }])).toThrow(/d\.json: n2v trained U-Net depth 3/);
    expect(() => mergeBudgetResults([{ file: 'a.json', result: seed1 }, { file: 'e.json', result: seed1 }])).toThrow(/e\.json: n2v seed 1 is in a\.json too/);
    expect(() => mergeBudgetResults([{ file: 'a.json', result: seed1 }])).toThrow(/at least two/);
  });
});
