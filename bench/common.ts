/** What every benchmark records beside its numbers: the command, commit, machine and backend. */
import { execFileSync } from 'node:child_process';
import { promises as fs, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PACKAGE_ROOT } from '../core/version.js';

export function machineInfo(): Record<string, unknown> {
  const cpus = os.cpus();
  return {
    cpu: cpus[0]?.model ?? 'unknown',
    logicalCores: os.availableParallelism(),
    memoryGiB: +(os.totalmem() / 2 ** 30).toFixed(1),
    platform: `${os.platform()} ${os.release()} ${os.arch()}`,
    node: process.version,
  };
}

export function gitCommit(): string {
  try {
    const commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: PACKAGE_ROOT, encoding: 'utf8' }).trim();
    const dirty = execFileSync('git', ['status', '--porcelain', '--untracked-files=no'], { cwd: PACKAGE_ROOT, encoding: 'utf8' }).trim();
    return dirty ? `${commit}+dirty` : commit;
  } catch {
    return 'unknown';
  }
}

/** Writes bench/results/<name>-<timestamp>.json and bench/results/<name>-latest.json; returns the path. */
export async function writeResult(name: string, result: Record<string, unknown>): Promise<string> {
  const dir = path.join(PACKAGE_ROOT, 'bench', 'results');
  await fs.mkdir(dir, { recursive: true });
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const full = {
    benchmark: name,
    date: new Date().toISOString(),
    command: ['node', ...process.argv.slice(1).map((a) => path.relative(PACKAGE_ROOT, a) || a)].join(' '),
    commit: gitCommit(),
    machine: machineInfo(),
    scheduling: schedulingInfo(),
    ...result,
  };
  const text = JSON.stringify(full, null, 2) + '\n';
  const file = path.join(dir, `${name}-${stamp}.json`);
  await fs.writeFile(file, text);
  await fs.writeFile(path.join(dir, `${name}-latest.json`), text);
  return file;
}

/**
 * This process's CPU priority as the scheduler sees it. With sched_autogroup (Linux's default on
 * desktop kernels, on here) each session is a group with an equal CPU share whatever its processes'
 * nice values, so `nice -n 19` jobs of other sessions still take their share from a speed run; the
 * group's own nice (/proc/self/autogroup) is what weighs against them.
 */
function schedulingInfo(): Record<string, unknown> {
  const read = (file: string): string | null => {
    try {
      return readFileSync(file, 'utf8').trim();
    } catch {
      return null;
    }
  };
  return { nice: os.getPriority(), autogroupEnabled: read('/proc/sys/kernel/sched_autogroup_enabled') === '1', autogroup: read('/proc/self/autogroup'), loadavg: read('/proc/loadavg') };
}

/** --name value pairs from argv (benchmarks take few options; a missing value is an error). */
export function benchArgs(argv: string[]): Map<string, string> {
  const out = new Map<string, string>();
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) throw new Error(`unexpected argument '${a}'`);
    const [key, inline] = a.slice(2).split('=', 2);
    if (inline !== undefined) out.set(key, inline);
    else if (i + 1 < argv.length && !argv[i + 1].startsWith('--')) out.set(key, argv[++i]);
    else out.set(key, 'true');
  }
  return out;
}

/** Runs a benchmark's main and exits with its status (0, or 1 with the error printed): worker pools must not keep it alive. */
export function runBenchmark(main: () => Promise<void>): void {
  main().then(
    () => process.exit(0),
    (err: unknown) => {
      console.error(err);
      process.exit(1);
    },
  );
}
