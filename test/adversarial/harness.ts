/**
 * The adversarial battery's tools: the CLI run in this process (runCli from cli/main.ts) with its
 * output captured, a secret planted in the environment, sha256 of inputs before and after, and the
 * checks every case makes: exit code, a message naming the file or option, no stack trace, a time
 * bound, inputs unchanged, no complete-looking output, no secret printed or written.
 */
import { createHash } from 'node:crypto';
import { spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { expect } from 'vitest';
import { runCli } from '../../cli/main.js';
import { PACKAGE_ROOT } from '../../core/version.js';

/** Planted in AWS_SECRET_ACCESS_KEY for every case: it must never appear in any output. */
export const SECRET = 'adversarial-S3cr3t-9f3a77e1c0de';
export const ACCESS_KEY = 'AKIAADVERSARIAL0001';

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
  ms: number;
  /** Growth of the resident set during the run, bytes (a rough bound on what a lying header made us allocate). */
  rssGrowth: number;
}

/** Runs `blindspot args...` in this process with `env` added (undefined removes a variable). */
export async function cli(args: string[], env: Record<string, string | undefined> = {}): Promise<CliResult> {
  const out: string[] = [];
  const err: string[] = [];
  const stdoutWrite = process.stdout.write;
  const stderrWrite = process.stderr.write;
  const saved: Record<string, string | undefined> = {};
  for (const [k, v] of Object.entries(env)) {
    saved[k] = process.env[k];
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
  process.stdout.write = ((chunk: unknown) => (out.push(String(chunk)), true)) as typeof process.stdout.write;
  process.stderr.write = ((chunk: unknown) => (err.push(String(chunk)), true)) as typeof process.stderr.write;
  const rss0 = process.memoryUsage().rss;
  const t0 = performance.now();
  let code: number;
  try {
    code = await runCli(args);
  } finally {
    process.stdout.write = stdoutWrite;
    process.stderr.write = stderrWrite;
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
  return { code, stdout: out.join(''), stderr: err.join(''), ms: performance.now() - t0, rssGrowth: process.memoryUsage().rss - rss0 };
}

/** Runs the built CLI (dist/) in a child process, killed after `timeoutMs`; `asUser` runs it unprivileged (runuser). */
export function cliProcess(args: string[], opts: { env?: Record<string, string>; timeoutMs?: number; asUser?: string; cwd?: string } = {}): Promise<CliResult & { killed: boolean }> {
  const main = path.join(PACKAGE_ROOT, 'dist', 'cli', 'main.js');
  const [command, argv] = opts.asUser ? ['runuser', ['-u', opts.asUser, '--', process.execPath, main, ...args]] : [process.execPath, [main, ...args]];
  return new Promise((resolve) => {
    const t0 = performance.now();
    const child = spawn(command, argv, { env: { ...process.env, ...opts.env }, cwd: opts.cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let killed = false;
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => {
      killed = true;
      child.kill('SIGKILL');
    }, opts.timeoutMs ?? 60_000);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? -1, stdout, stderr, ms: performance.now() - t0, rssGrowth: 0, killed });
    });
  });
}

/** sha256 of a file, or of a folder's sorted relative paths and contents; 'absent' when missing. */
export async function hashPath(p: string): Promise<string> {
  const hash = createHash('sha256');
  const visit = async (at: string, rel: string): Promise<void> => {
    const stat = await fs.lstat(at);
    if (stat.isSymbolicLink()) {
      hash.update(`link ${rel} -> ${await fs.readlink(at)}\n`);
    } else if (stat.isDirectory()) {
      hash.update(`dir ${rel} ${stat.mode & 0o777}\n`);
      for (const name of (await fs.readdir(at)).sort()) await visit(path.join(at, name), `${rel}/${name}`);
    } else {
      hash.update(`file ${rel} ${stat.mode & 0o777}\n`);
      hash.update(await fs.readFile(at));
    }
  };
  try {
    await visit(p, '.');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 'absent';
    throw err;
  }
  return hash.digest('hex');
}

/** Hashes of several paths, to compare before and after a run. */
export async function hashAll(paths: readonly string[]): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const p of paths) out[p] = await hashPath(p);
  return out;
}

const IMAGE_FILE = /\.(png|tiff?|fits(\.gz)?|fit|npy)$/i;

/**
 * Whether `p` holds nothing a reader could take for a result: absent; or no image file, model or
 * finished OME-Zarr inside (an OME-Zarr must carry the incomplete marker).
 */
export async function completeLookingOutputs(p: string): Promise<string[]> {
  const found: string[] = [];
  const visit = async (at: string): Promise<void> => {
    let stat;
    try {
      stat = await fs.lstat(at);
    } catch {
      return;
    }
    if (stat.isSymbolicLink()) return;
    if (!stat.isDirectory()) {
      if (IMAGE_FILE.test(at) && stat.size > 0) found.push(at);
      return;
    }
    const names = await fs.readdir(at);
    for (const meta of ['zarr.json', '.zattrs']) {
      if (!names.includes(meta)) continue;
      const doc = JSON.parse(await fs.readFile(path.join(at, meta), 'utf8')) as Record<string, unknown>;
      const attributes = (meta === 'zarr.json' ? doc.attributes : doc) as Record<string, unknown> | undefined;
      const multiscales = attributes && ((attributes.ome as Record<string, unknown> | undefined)?.multiscales ?? attributes.multiscales);
      if (multiscales && !attributes?.blindspot_incomplete) found.push(`${at} (an OME-Zarr without the incomplete marker)`);
      return;
    }
    if (names.includes('model.json') && names.includes('blindspot.json')) found.push(`${at} (a model folder)`);
    for (const name of names) await visit(path.join(at, name));
  };
  await visit(p);
  return found;
}

export interface Expectation {
  code: number;
  /** Strings the message must contain (the file, chunk or option it is about). */
  mentions?: readonly string[];
  /** A pattern the message must match (the problem). */
  says?: RegExp;
  maxMs?: number;
  /** Inputs that must be byte-identical afterwards (hashes taken before the run). */
  inputs?: Record<string, string>;
  /** Output locations that must hold nothing complete-looking. */
  outputs?: readonly string[];
  /** Bytes the run may grow the resident set by (default 768 MiB). */
  maxRssGrowth?: number;
}

/** The checks every case makes (see the file comment). */
export async function expectOutcome(r: CliResult, want: Expectation): Promise<void> {
  const text = r.stdout + r.stderr;
  const context = `exit ${r.code} after ${r.ms.toFixed(0)} ms\n--- stderr\n${r.stderr.slice(-2000)}\n--- stdout\n${r.stdout.slice(-500)}`;
  expect(r.code, context).toBe(want.code);
  if (want.code !== 0) {
    expect(r.stderr, context).not.toMatch(/unexpected error/);
    expect(r.stderr, context).not.toMatch(/\n\s+at .+:\d+:\d+/);
  }
  for (const m of want.mentions ?? []) expect(r.stderr, context).toContain(m);
  if (want.says) expect(r.stderr, context).toMatch(want.says);
  expect(r.ms, context).toBeLessThan(want.maxMs ?? 20_000);
  expect(r.rssGrowth, context).toBeLessThan(want.maxRssGrowth ?? 768 * 2 ** 20);
  expect(text).not.toContain(SECRET);
  if (want.inputs) expect(await hashAll(Object.keys(want.inputs)), 'inputs changed').toEqual(want.inputs);
  for (const out of want.outputs ?? []) {
    expect(await completeLookingOutputs(out), `complete-looking output in ${out}`).toEqual([]);
    expect(await containsSecret(out), `the secret in ${out}`).toBe(false);
  }
}

/** Whether any file under `p` contains SECRET. */
export async function containsSecret(p: string): Promise<boolean> {
  let stat;
  try {
    stat = await fs.lstat(p);
  } catch {
    return false;
  }
  if (stat.isSymbolicLink()) return false;
  if (stat.isDirectory()) {
    for (const name of await fs.readdir(p)) if (await containsSecret(path.join(p, name))) return true;
    return false;
  }
  return (await fs.readFile(p)).includes(SECRET);
}

/** Plants credentials in the environment (as a user with AWS keys would have them). */
export function plantSecret(): () => void {
  const saved = { id: process.env.AWS_ACCESS_KEY_ID, secret: process.env.AWS_SECRET_ACCESS_KEY };
  process.env.AWS_ACCESS_KEY_ID = ACCESS_KEY;
  process.env.AWS_SECRET_ACCESS_KEY = SECRET;
  return () => {
    if (saved.id === undefined) delete process.env.AWS_ACCESS_KEY_ID;
    else process.env.AWS_ACCESS_KEY_ID = saved.id;
    if (saved.secret === undefined) delete process.env.AWS_SECRET_ACCESS_KEY;
    else process.env.AWS_SECRET_ACCESS_KEY = saved.secret;
  };
}
