/**
 * infra/: the container images, the Kubernetes Job / CronJob / Secret, the AWS Batch job, and the
 * model fetch the images run first. No cluster, Docker daemon or AWS account here, so the files are
 * parsed and checked against what the engines document and against the CLI itself (its help text,
 * option tables, shutdown bound, shard variables and exit codes, read at test time).
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PACKAGE_ROOT } from '../core/version.js';
import { ExitCode, InputError, OutputError } from '../core/errors.js';
import { DEFAULT_GRACE_SECONDS } from '../cli/options.js';
import { SHARD_INDEX_VARIABLES } from '../pipeline/shard.js';
import { parseByteSize } from '../pipeline/streamDenoise.js';
import { fetchModelFolder, FETCH_RECORD, REQUIRED_MODEL_FILES } from '../infra/fetchModel.js';
import { S3Store } from '../storage/s3.js';
import { startLocalS3, swiftAvailable, SWIFT_MISSING_MESSAGE, type LocalS3 } from '../infra/localS3.js';

const ROOT = PACKAGE_ROOT;
const read = (rel: string): string => readFileSync(path.join(ROOT, rel), 'utf8');

/** Seconds a pod keeps after the CLI's shutdown bound: the journal flush and process exit. */
const SHUTDOWN_MARGIN_SECONDS = 5;

// ---------------------------------------------------------------------------------------------
// What the CLI accepts, read from its sources.

/** The body of the template literal whose opening backtick is just before `start`. */
function templateLiteralAt(source: string, start: number): string {
  let depth = 0;
  for (let i = start; i < source.length; i++) {
    const c = source[i];
    if (c === '\\') {
      i++;
      continue;
    }
    if (depth === 0 && c === '`') return source.slice(start, i);
    if (c === '$' && source[i + 1] === '{') {
      depth++;
      i++;
    } else if (c === '}' && depth > 0) depth--;
  }
  throw new Error('unterminated template literal');
}

function cliSources(): Array<{ file: string; text: string }> {
  return readdirSync(path.join(ROOT, 'cli'))
    .filter((f) => f.endsWith('.ts'))
    .map((f) => ({ file: `cli/${f}`, text: read(`cli/${f}`) }));
}

/** The help text of `command`: inline in cli/main.ts's HELP table, or an exported *_HELP constant it names. */
function helpText(command: string): string {
  const main = read('cli/main.ts');
  const table = main.slice(main.indexOf('const HELP'));
  const inline = new RegExp(`^\\s*'?${command}'?:\\s*\``, 'm').exec(table);
  if (inline) return withSharedHelp(templateLiteralAt(table, inline.index + inline[0].length));
  const named = new RegExp(`^\\s*'?${command}'?:\\s*([A-Z][A-Z0-9_]*)\\s*,`, 'm').exec(table);
  if (!named) throw new Error(`cli/main.ts HELP has no entry for '${command}'`);
  return withSharedHelp(exportedHelp(named[1]));
}

/** The text of an exported help constant of cli/*.ts (`export const ENGINE_HELP = \`...\``). */
function exportedHelp(name: string): string {
  for (const { text } of cliSources()) {
    const decl = new RegExp(`export const ${name}(?:\\s*:\\s*string)?\\s*=\\s*\``).exec(text);
    if (decl) return templateLiteralAt(text, decl.index + decl[0].length);
  }
  throw new Error(`no exported ${name} in cli/*.ts`);
}

/** Help text with the shared help blocks it interpolates (`${ENGINE_HELP}`) written out. */
function withSharedHelp(help: string): string {
  return help.replace(/\$\{([A-Z][A-Z0-9_]*_HELP)\}/g, (_, name: string) => withSharedHelp(exportedHelp(name)));
}

function isDispatched(command: string): boolean {
  return new RegExp(`case\\s+'${command}'\\s*:`).test(read('cli/main.ts'));
}

/** Whether some cli/*.ts parseArgs table declares the option (`'shard-count': { type: ...`). */
function isDeclaredOption(name: string): boolean {
  const key = new RegExp(`(?:^|[\\s{,])(['"]?)${name.replace(/-/g, '\\-')}\\1\\s*:\\s*\\{\\s*type\\s*:`, 'm');
  return cliSources().some(({ text }) => key.test(text));
}

function mentionsFlag(help: string, flag: string): boolean {
  return new RegExp(`${flag.replace(/-/g, '\\-')}(?![a-z0-9-])`).test(help);
}

/** Flags (`--name`) in a command line, without `=value`. */
function flagsOf(args: string[]): string[] {
  return args.filter((a) => a.startsWith('--')).map((a) => a.split('=')[0]);
}

function optionValue(args: string[], flag: string): string | undefined {
  const i = args.findIndex((a) => a === flag || a.startsWith(flag + '='));
  if (i < 0) return undefined;
  return args[i].includes('=') ? args[i].slice(flag.length + 1) : args[i + 1];
}

/** Checks a container command line against the CLI: the subcommand exists, every flag is documented and parsed. */
function expectAcceptedByCli(args: string[], where: string): void {
  const [command] = args;
  expect(isDispatched(command), `${where}: 'blindspot ${command}' is not a command of cli/main.ts`).toBe(true);
  const help = helpText(command);
  for (const flag of flagsOf(args)) {
    expect(mentionsFlag(help, flag), `${where}: ${flag} is not in 'blindspot ${command} --help'`).toBe(true);
    expect(isDeclaredOption(flag.slice(2)), `${where}: ${flag} is in no option table of cli/*.ts`).toBe(true);
  }
}

// ---------------------------------------------------------------------------------------------
// Kubernetes.

type Obj = Record<string, any>;

function yamlDocuments(rel: string): Obj[] {
  const docs = parseAllDocuments(read(rel));
  for (const doc of docs) {
    expect(doc.errors.map((e) => e.message), `${rel} parse errors`).toEqual([]);
    expect(doc.warnings.map((e) => e.message), `${rel} parse warnings`).toEqual([]);
  }
  return docs.map((d) => d.toJS() as Obj).filter((d) => d !== null);
}

/** A Kubernetes resource quantity in base units (bytes for memory). */
function quantity(q: string | number): number {
  if (typeof q === 'number') return q;
  const m = /^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?$/.exec(q);
  if (!m) throw new Error(`not a Kubernetes quantity: ${q}`);
  const factor: Record<string, number> = { Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, Pi: 2 ** 50, Ei: 2 ** 60, m: 1e-3, k: 1e3, M: 1e6, G: 1e9, T: 1e12, P: 1e15, E: 1e18 };
  return Number(m[1]) * (m[2] ? factor[m[2]] : 1);
}

interface PodOutcome {
  exitCode?: number;
  container?: string;
  conditions?: string[];
}

/** What a Job's podFailurePolicy does with a failed pod: the first matching rule's action, else 'Count'. */
function podFailureAction(policy: Obj | undefined, pod: PodOutcome): string {
  for (const rule of policy?.rules ?? []) {
    if (rule.onExitCodes) {
      const r = rule.onExitCodes;
      if (pod.exitCode === undefined || pod.exitCode === 0) continue;
      if (r.containerName !== undefined && r.containerName !== pod.container) continue;
      const listed = (r.values as number[]).includes(pod.exitCode);
      if ((r.operator === 'In' && listed) || (r.operator === 'NotIn' && !listed)) return rule.action;
    }
    if (rule.onPodConditions) {
      if ((rule.onPodConditions as Obj[]).some((c) => (pod.conditions ?? []).includes(c.type) && (c.status ?? 'True') === 'True')) return rule.action;
    }
  }
  return 'Count';
}

/** Whether `expr` is a valid 5-field cron schedule as Kubernetes' CronJob reads it. */
function isValidCron(expr: string): boolean {
  const fields = expr.trim().split(/\s+/);
  if (fields.length !== 5) return false;
  const months = ['JAN', 'FEB', 'MAR', 'APR', 'MAY', 'JUN', 'JUL', 'AUG', 'SEP', 'OCT', 'NOV', 'DEC'];
  const days = ['SUN', 'MON', 'TUE', 'WED', 'THU', 'FRI', 'SAT'];
  const limits: Array<[number, number, string[]]> = [
    [0, 59, []],
    [0, 23, []],
    [1, 31, []],
    [1, 12, months],
    [0, 7, days],
  ];
  return fields.every((field, f) => {
    const [lo, hi, names] = limits[f];
    const value = (t: string): number | null => {
      const named = names.indexOf(t.toUpperCase());
      if (named >= 0) return f === 3 ? named + 1 : named;
      if (!/^\d+$/.test(t)) return null;
      const n = Number(t);
      return n >= lo && n <= hi ? n : null;
    };
    return field.split(',').every((item) => {
      const [range, step, extra] = item.split('/');
      if (extra !== undefined || range === '') return false;
      if (step !== undefined && !(/^\d+$/.test(step) && Number(step) >= 1)) return false;
      if (range === '*' || (f >= 2 && range === '?')) return true;
      const [a, b, more] = range.split('-');
      if (more !== undefined) return false;
      const va = value(a);
      if (va === null) return false;
      if (b === undefined) return true;
      const vb = value(b);
      return vb !== null && va <= vb;
    });
  });
}

const secretDoc = (): Obj => yamlDocuments('infra/k8s/secret.example.yaml')[0];

function podSpecOf(doc: Obj): Obj {
  return doc.kind === 'CronJob' ? doc.spec.jobTemplate.spec.template.spec : doc.spec.template.spec;
}
function jobSpecOf(doc: Obj): Obj {
  return doc.kind === 'CronJob' ? doc.spec.jobTemplate.spec : doc.spec;
}

/** The checks every blindspot pod spec must pass, whichever controller runs it. */
function expectBlindspotPod(doc: Obj, where: string, uid: number): void {
  const pod = podSpecOf(doc);
  const job = jobSpecOf(doc);
  expect(pod.restartPolicy, `${where}: restartPolicy (Never: retries are new pods, needed by backoffLimitPerIndex and podFailurePolicy)`).toBe('Never');
  expect(pod.containers).toHaveLength(1);
  const container = pod.containers[0];
  const args: string[] = container.args.map(String);
  expectAcceptedByCli(args, where);

  // Shutdown: Kubernetes sends SIGTERM, waits terminationGracePeriodSeconds, then kills.
  const graceArg = optionValue(args, '--grace-seconds');
  const cliBound = graceArg === undefined ? DEFAULT_GRACE_SECONDS : Number(graceArg);
  expect(Number.isFinite(cliBound)).toBe(true);
  expect(pod.terminationGracePeriodSeconds, `${where}: grace period vs the CLI's ${cliBound} s shutdown bound`).toBeGreaterThanOrEqual(cliBound + SHUTDOWN_MARGIN_SECONDS);

  // GPU, and memory above the CLI's bound.
  expect(quantity(container.resources.limits['nvidia.com/gpu'])).toBe(1);
  if (container.resources.requests?.['nvidia.com/gpu'] !== undefined) expect(quantity(container.resources.requests['nvidia.com/gpu'])).toBe(1);
  const maxMemory = optionValue(args, '--max-memory');
  if (maxMemory !== undefined) {
    expect(parseByteSize(maxMemory), `${where}: --max-memory must leave room for the model, TensorFlow and Node under the memory limit`).toBeLessThan(0.9 * quantity(container.resources.limits.memory));
  }

  // S3 credentials come from the example Secret, by keys it defines.
  const secret = secretDoc();
  const env: Obj[] = container.env ?? [];
  const refs: Array<{ env: string; name: string; key: string; optional?: boolean }> = env
    .filter((e) => e.valueFrom?.secretKeyRef)
    .map((e) => ({ env: e.name as string, ...(e.valueFrom.secretKeyRef as { name: string; key: string; optional?: boolean }) }));
  for (const ref of refs) {
    expect(ref.name, `${where}: ${ref.env} names another Secret`).toBe(secret.metadata.name);
    expect(Object.keys(secret.stringData), `${where}: ${ref.env} refers to key ${ref.key}`).toContain(ref.key);
  }
  for (const required of ['AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY']) {
    const ref = refs.find((r) => r.env === required);
    expect(ref, `${where}: ${required} from the Secret`).toBeDefined();
    expect(ref?.optional ?? false, `${where}: ${required} must not be optional`).toBe(false);
  }
  for (const e of container.envFrom ?? []) if (e.secretRef) expect(e.secretRef.name).toBe(secret.metadata.name);

  // The model: fetched from S3 by the entrypoint into a folder the command names, inside a volume.
  const envValue = (name: string): string | undefined => env.find((e) => e.name === name)?.value;
  const modelUrl = envValue('BLINDSPOT_MODEL_URL');
  const modelDir = envValue('BLINDSPOT_MODEL_DIR');
  expect(modelUrl, `${where}: BLINDSPOT_MODEL_URL`).toMatch(/^s3:\/\/[a-z0-9][a-z0-9.-]+[a-z0-9]\/.+/);
  expect(modelDir).toBeDefined();
  const commandModel = args[0] === 'denoise' ? args[1] : optionValue(args, '--model');
  expect(commandModel, `${where}: the command's model folder is the one the entrypoint fills`).toBe(modelDir);
  const mounts: Obj[] = container.volumeMounts ?? [];
  const holder = mounts.find((m) => modelDir!.startsWith(String(m.mountPath).replace(/\/$/, '') + '/'));
  expect(holder, `${where}: ${modelDir} must lie inside a mounted volume (not be its mount point: the fetch renames into place)`).toBeDefined();
  expect(pod.volumes.map((v: Obj) => v.name)).toContain(holder!.name);
  if (container.securityContext?.readOnlyRootFilesystem) {
    expect(mounts.map((m) => m.mountPath), `${where}: a read-only root needs a writable /tmp`).toContain('/tmp');
  }

  // The shard index is the engine's: nothing in the manifest may pin it.
  for (const variable of SHARD_INDEX_VARIABLES) expect(env.map((e) => e.name)).not.toContain(variable);
  expect(flagsOf(args)).not.toContain('--shard');

  // Non-root, as the image's user.
  expect(pod.securityContext.runAsNonRoot).toBe(true);
  expect(pod.securityContext.runAsUser).toBe(uid);

  // Failures that retrying cannot fix stop at once; disruptions do not count.
  const usageLike = [ExitCode.usage, ExitCode.input, ExitCode.output];
  for (const code of usageLike) {
    expect(['FailIndex', 'FailJob'], `${where}: exit ${code}`).toContain(podFailureAction(job.podFailurePolicy, { exitCode: code, container: container.name }));
  }
  expect(podFailureAction(job.podFailurePolicy, { exitCode: ExitCode.interrupted, container: container.name }), `${where}: exit 130 is retried`).toBe('Count');
  expect(podFailureAction(job.podFailurePolicy, { exitCode: ExitCode.failure, container: container.name })).toBe('Count');
  expect(podFailureAction(job.podFailurePolicy, { exitCode: ExitCode.interrupted, container: container.name, conditions: ['DisruptionTarget'] })).toBe('Ignore');
  expect(job.podReplacementPolicy, `${where}: one pod per index at a time`).toBe('Failed');
}

// ---------------------------------------------------------------------------------------------
// Dockerfiles.

interface Instruction {
  op: string;
  args: string;
}

function dockerfile(rel: string): { instructions: Instruction[]; comments: string } {
  const instructions: Instruction[] = [];
  const comments: string[] = [];
  let pending = '';
  for (const raw of read(rel).split('\n')) {
    const line = raw.trim();
    if (line.startsWith('#')) {
      comments.push(line.replace(/^#\s?/, ''));
      continue;
    }
    if (line === '' && pending === '') continue;
    if (line.endsWith('\\')) {
      pending += line.slice(0, -1) + ' ';
      continue;
    }
    const full = (pending + line).trim();
    pending = '';
    if (full === '') continue;
    const space = full.search(/\s/);
    instructions.push({ op: full.slice(0, space).toUpperCase(), args: full.slice(space + 1).trim() });
  }
  return { instructions, comments: comments.join('\n') };
}

interface Stage {
  image: string;
  name?: string;
  instructions: Instruction[];
}

function stagesOf(instructions: Instruction[]): Stage[] {
  const globals: Record<string, string> = {};
  const stages: Stage[] = [];
  for (const ins of instructions) {
    if (ins.op === 'ARG' && stages.length === 0) {
      const [name, value] = ins.args.split('=');
      if (value !== undefined) globals[name] = value;
    } else if (ins.op === 'FROM') {
      const parts = ins.args.split(/\s+/).filter((p) => !p.startsWith('--'));
      const image = parts[0].replace(/\$\{?([A-Z_][A-Z0-9_]*)\}?/g, (_, v: string) => {
        if (globals[v] === undefined) throw new Error(`FROM uses ${v}, which has no default`);
        return globals[v];
      });
      stages.push({ image, name: parts[1]?.toUpperCase() === 'AS' ? parts[2] : undefined, instructions: [] });
    } else {
      stages.at(-1)?.instructions.push(ins);
    }
  }
  return stages;
}

function imageUid(rel: string): number {
  const stages = stagesOf(dockerfile(rel).instructions);
  const users = stages.at(-1)!.instructions.filter((i) => i.op === 'USER');
  const user = users.at(-1)!.args.split(':')[0];
  expect(user, `${rel}: USER must be numeric (Kubernetes' runAsNonRoot checks numbers)`).toMatch(/^\d+$/);
  return Number(user);
}

function expectImage(rel: string): { stages: Stage[]; comments: string } {
  const { instructions, comments } = dockerfile(rel);
  const stages = stagesOf(instructions);
  expect(stages.length, `${rel}: multi-stage`).toBeGreaterThanOrEqual(2);
  const names = new Set(stages.map((s) => s.name).filter(Boolean));
  for (const stage of stages) {
    if (names.has(stage.image)) continue;
    const tag = /^[^:@\s]+:([^@\s]+)$/.exec(stage.image)?.[1];
    expect(tag, `${rel}: FROM ${stage.image} has no tag`).toBeDefined();
    expect(tag).not.toBe('latest');
    expect(tag, `${rel}: FROM ${stage.image} pins no version`).toMatch(/^\d+\.\d+(\.\d+)?-/);
  }
  const final = stages.at(-1)!;
  const users = final.instructions.filter((i) => i.op === 'USER');
  expect(users.length, `${rel}: the final stage sets USER`).toBeGreaterThan(0);
  const user = users.at(-1)!.args;
  expect(user.split(':')[0]).not.toMatch(/^(root|0)$/);
  expect(imageUid(rel)).toBeGreaterThan(0);
  // The uid exists in the image.
  expect(final.instructions.some((i) => i.op === 'RUN' && i.args.includes(`--uid ${imageUid(rel)}`))).toBe(true);

  const entrypoints = final.instructions.filter((i) => i.op === 'ENTRYPOINT');
  expect(entrypoints.length, `${rel}: ENTRYPOINT`).toBe(1);
  const entrypoint = JSON.parse(entrypoints[0].args) as string[];
  const copied = final.instructions.find((i) => i.op === 'COPY' && i.args.startsWith('infra/docker/entrypoint.sh '));
  expect(copied, `${rel}: copies infra/docker/entrypoint.sh`).toBeDefined();
  expect(entrypoint, `${rel}: ENTRYPOINT runs the copied entrypoint script`).toContain(copied!.args.split(/\s+/)[1]);
  expect(entrypoint[0], `${rel}: an init as PID 1 forwards SIGTERM`).toMatch(/tini$/);

  // The runtime layout the entrypoint relies on: /app/dist, and the bin named in package.json.
  expect(final.instructions.find((i) => i.op === 'WORKDIR')?.args).toBe('/app');
  expect(final.instructions.some((i) => i.op === 'COPY' && /\/dist \.\/dist$/.test(i.args))).toBe(true);
  const bin = (JSON.parse(read('package.json')) as { bin: Record<string, string> }).bin.blindspot;
  expect(final.instructions.some((i) => i.op === 'RUN' && i.args.includes(`ln -s /app/${bin} /usr/local/bin/blindspot`))).toBe(true);
  expect(final.instructions.some((i) => i.op === 'COPY' && i.args === 'package.json ./'), `${rel}: core/version.ts reads package.json at run time`).toBe(true);

  // Node major of every node:* stage = the major package.json's engines ask for.
  const engines = (JSON.parse(read('package.json')) as { engines: { node: string } }).engines.node;
  const nodeMajor = /(\d+)/.exec(engines)![1];
  for (const stage of stages.filter((s) => s.image.startsWith('node:'))) expect(stage.image).toMatch(new RegExp(`^node:${nodeMajor}\\.`));
  const npmCi = stages.flatMap((s) => s.instructions).filter((i) => i.op === 'RUN' && i.args.includes('npm ci'));
  expect(npmCi.length).toBeGreaterThan(0);
  return { stages, comments };
}

// ---------------------------------------------------------------------------------------------
// AWS Batch.

interface BatchRule {
  action: string;
  onExitCode?: string;
  onReason?: string;
  onStatusReason?: string;
}

function batchGlob(pattern: string, value: string | undefined): boolean {
  if (value === undefined) return false;
  return pattern.endsWith('*') ? value.startsWith(pattern.slice(0, -1)) : value === pattern;
}

/** What Batch does with a failed attempt: the first rule whose conditions all match; none matching means RETRY. */
function batchAction(rules: BatchRule[], attempt: { exitCode?: number; reason?: string; statusReason?: string }): 'RETRY' | 'EXIT' {
  for (const rule of rules) {
    const conditions: boolean[] = [];
    if (rule.onExitCode !== undefined) conditions.push(batchGlob(rule.onExitCode, attempt.exitCode === undefined ? undefined : String(attempt.exitCode)));
    if (rule.onReason !== undefined) conditions.push(batchGlob(rule.onReason, attempt.reason));
    if (rule.onStatusReason !== undefined) conditions.push(batchGlob(rule.onStatusReason, attempt.statusReason));
    if (conditions.length > 0 && conditions.every(Boolean)) return rule.action.toUpperCase() as 'RETRY' | 'EXIT';
  }
  return 'RETRY';
}

// =============================================================================================

describe('the CLI surface the manifests rely on', () => {
  it('reads help text and option tables from the sources', () => {
    const denoise = helpText('denoise');
    expect(denoise).toMatch(/Usage: blindspot denoise/);
    expect(mentionsFlag(denoise, '--shard')).toBe(true);
    expect(mentionsFlag('--shard-count N', '--shard')).toBe(false);
    expect(isDeclaredOption('max-memory')).toBe(true);
    expect(isDeclaredOption('no-such-option')).toBe(false);
    expect(isDispatched('denoise')).toBe(true);
    expect(isDispatched('frobnicate')).toBe(false);
    expect(() => expectAcceptedByCli(['denoise', 'm', 'in.zarr', '--out', 'o.zarr', '--no-such-flag'], 'probe')).toThrow(/--no-such-flag/);
  });

  it('knows the cron and quantity syntax it checks with', () => {
    for (const good of ['30 2 * * *', '*/15 * * * 1-5', '0 0 1,15 JAN-MAR SUN', '0 22 * * 7']) expect(isValidCron(good), good).toBe(true);
    for (const bad of ['30 2 * *', '61 * * * *', '0 24 * * *', '0 0 0 * *', '0 0 * 13 *', '* * * * * *', '5-1 * * * *', '*/0 * * * *', '@daily']) expect(isValidCron(bad), bad).toBe(false);
    expect(quantity('16Gi')).toBe(16 * 2 ** 30);
    expect(quantity('500M')).toBe(5e8);
    expect(quantity(1)).toBe(1);
  });
});

describe('Kubernetes manifests', () => {
  const uid = imageUid('infra/docker/Dockerfile.onnx-gpu');

  it('example Secret: the keys the pods read, placeholders only', () => {
    const docs = yamlDocuments('infra/k8s/secret.example.yaml');
    expect(docs).toHaveLength(1);
    const [secret] = docs;
    expect(secret.apiVersion).toBe('v1');
    expect(secret.kind).toBe('Secret');
    expect(secret.type).toBe('Opaque');
    expect(Object.keys(secret.stringData)).toEqual(expect.arrayContaining(['AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_ENDPOINT_URL_S3']));
    expect(secret.stringData.AWS_ACCESS_KEY_ID).toBe('REPLACE_ME');
    expect(secret.stringData.AWS_SECRET_ACCESS_KEY).toBe('REPLACE_ME');
    // The endpoint variable is one the S3 client reads.
    expect(read('storage/s3.ts')).toContain('process.env.AWS_ENDPOINT_URL_S3');
  });

  it('Indexed Job: N shards = completions = parallelism = --shard-count, per-index retries, GPU, grace period', () => {
    const docs = yamlDocuments('infra/k8s/indexed-job.yaml');
    expect(docs).toHaveLength(1);
    const [job] = docs;
    expect(job.apiVersion).toBe('batch/v1');
    expect(job.kind).toBe('Job');
    expect(job.spec.completionMode).toBe('Indexed');
    const shards = job.spec.completions;
    expect(Number.isInteger(shards) && shards >= 1).toBe(true);
    expect(job.spec.parallelism).toBe(shards);
    const args: string[] = job.spec.template.spec.containers[0].args.map(String);
    expect(args[0]).toBe('denoise');
    expect(optionValue(args, '--shard-count')).toBe(String(shards));
    expect(flagsOf(args)).toContain('--json');
    // The index the CLI reads first is the one Kubernetes sets.
    expect(SHARD_INDEX_VARIABLES[0]).toBe('JOB_COMPLETION_INDEX');
    expect(job.spec.backoffLimitPerIndex).toBeGreaterThanOrEqual(1);
    expect(job.spec.backoffLimit, 'backoffLimit would cap retries across all indexes').toBeUndefined();
    // The output is a URL every pod can write, and not the input.
    expect(args[2]).toMatch(/^s3:\/\//);
    expect(optionValue(args, '--out')).toMatch(/^s3:\/\/.+\.zarr$/);
    expect(optionValue(args, '--out')).not.toBe(args[2]);
    expectBlindspotPod(job, 'indexed-job.yaml', uid);
  });

  it('CronJob: a valid 5-field schedule, never two runs at once, a watch --once run', () => {
    const docs = yamlDocuments('infra/k8s/cronjob.yaml');
    expect(docs).toHaveLength(1);
    const [cron] = docs;
    expect(cron.apiVersion).toBe('batch/v1');
    expect(cron.kind).toBe('CronJob');
    expect(isValidCron(cron.spec.schedule)).toBe(true);
    expect(cron.spec.concurrencyPolicy).toBe('Forbid');
    expect(cron.spec.startingDeadlineSeconds).toBeGreaterThan(0);
    const args: string[] = cron.spec.jobTemplate.spec.template.spec.containers[0].args.map(String);
    expect(args[0]).toBe('watch');
    expect(flagsOf(args)).toContain('--once');
    // A run must end before the next one is due (one a day), or Forbid skips nights.
    expect(cron.spec.schedule.split(/\s+/).slice(2)).toEqual(['*', '*', '*']);
    expect(cron.spec.jobTemplate.spec.activeDeadlineSeconds).toBeLessThan(24 * 3600);
    expectBlindspotPod(cron, 'cronjob.yaml', uid);
  });
});

describe('AWS Batch', () => {
  const definition = JSON.parse(read('infra/aws/batch-job-definition.json')) as Obj;
  const submission = JSON.parse(read('infra/aws/submit-array-job.json')) as Obj;

  it('job definition: GPU container, the CLI command with every Ref:: resolved, memory above --max-memory', () => {
    expect(definition.type).toBe('container');
    expect(definition.platformCapabilities).toEqual(['EC2']);
    const container = definition.containerProperties;
    const resources = Object.fromEntries((container.resourceRequirements as Obj[]).map((r) => [r.type, r.value]));
    expect(resources.GPU).toBe('1');
    expect(Number(resources.VCPU)).toBeGreaterThanOrEqual(1);
    const memoryMiB = Number(resources.MEMORY);
    const parameters = { ...definition.parameters, ...submission.parameters } as Record<string, string>;
    const command = (container.command as string[]).map((token) => {
      const ref = /^Ref::(\w+)$/.exec(token);
      if (!ref) return token;
      expect(parameters[ref[1]], `Ref::${ref[1]} has no default and no submitted value`).toBeDefined();
      return parameters[ref[1]];
    });
    expectAcceptedByCli(command, 'batch-job-definition.json');
    expect(command[0]).toBe('denoise');
    expect(parseByteSize(optionValue(command, '--max-memory')!)).toBeLessThan(0.9 * memoryMiB * 2 ** 20);
    expect(Number(optionValue(command, '--grace-seconds'))).toBeLessThanOrEqual(30 - SHUTDOWN_MARGIN_SECONDS); // ECS stop timeout default 30 s
    expect(flagsOf(command)).not.toContain('--shard');
    expect(SHARD_INDEX_VARIABLES).toContain('AWS_BATCH_JOB_ARRAY_INDEX');
    const environment = Object.fromEntries((container.environment as Obj[]).map((e) => [e.name, e.value]));
    expect(command[1]).toBe(environment.BLINDSPOT_MODEL_DIR);
    for (const variable of SHARD_INDEX_VARIABLES) expect(environment[variable]).toBeUndefined();
    expect(definition.timeout.attemptDurationSeconds).toBeGreaterThanOrEqual(60);
  });

  it('retry strategy: 130 and lost hosts retry, usage / bad input / refused output do not', () => {
    const { attempts, evaluateOnExit } = definition.retryStrategy as { attempts: number; evaluateOnExit: BatchRule[] };
    expect(attempts).toBeGreaterThanOrEqual(2);
    expect(attempts).toBeLessThanOrEqual(10);
    expect(evaluateOnExit.length).toBeLessThanOrEqual(5);
    for (const rule of evaluateOnExit) {
      expect(rule.action.toUpperCase()).toMatch(/^(RETRY|EXIT)$/);
      if (rule.onExitCode !== undefined) expect(rule.onExitCode).toMatch(/^\d+\*?$|^\*$/);
    }
    expect(batchAction(evaluateOnExit, { exitCode: ExitCode.interrupted })).toBe('RETRY');
    for (const code of [ExitCode.usage, ExitCode.input, ExitCode.output]) expect(batchAction(evaluateOnExit, { exitCode: code }), `exit ${code}`).toBe('EXIT');
    expect(batchAction(evaluateOnExit, { exitCode: ExitCode.failure })).toBe('RETRY');
    expect(batchAction(evaluateOnExit, { statusReason: 'Host EC2 (instance i-0123456789abcdef0) terminated.' })).toBe('RETRY');
    // Exit codes are matched whole: 130 must not fall under a rule for 1 or 13.
    expect(batchAction([{ onExitCode: '1', action: 'EXIT' }], { exitCode: 130 })).toBe('RETRY');
    expect(batchAction([{ onExitCode: '1*', action: 'EXIT' }], { exitCode: 130 })).toBe('EXIT');
  });

  it('array submission: arrayProperties.size = shardCount, the model URL given', () => {
    expect(submission.jobDefinition).toBe(definition.jobDefinitionName);
    const size = submission.arrayProperties.size;
    expect(Number.isInteger(size) && size >= 2 && size <= 10_000).toBe(true);
    expect(submission.parameters.shardCount).toBe(String(size));
    const env = submission.containerOverrides.environment as Obj[];
    expect(env.find((e) => e.name === 'BLINDSPOT_MODEL_URL')?.value).toMatch(/^s3:\/\//);
  });

  it('submit script: valid bash; writes N into both size and shardCount; refuses N < 2 and local paths', async () => {
    const script = path.join(ROOT, 'infra/aws/submit-array-job.sh');
    expect(spawnSync('bash', ['-n', script]).status).toBe(0);
    const fakeBin = await fs.mkdtemp(path.join(os.tmpdir(), 'blindspot-infra-aws-'));
    // Stands in for the AWS CLI (no account here): prints its arguments, one per line.
    await fs.writeFile(path.join(fakeBin, 'aws'), '#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n', { mode: 0o755 });
    const env = { ...process.env, PATH: `${fakeBin}:${process.env.PATH}` };
    try {
      const ok = spawnSync('bash', [script, '12', 's3://lab/raw/vol.ome.zarr', 's3://lab/den/vol.zarr', 's3://lab/models/m'], { env, encoding: 'utf8' });
      expect(ok.stderr).toBe('');
      expect(ok.status).toBe(0);
      const lines = ok.stdout.split('\n');
      expect(lines.slice(0, 3)).toEqual(['batch', 'submit-job', '--cli-input-json']);
      const request = JSON.parse(lines.slice(3).join('\n')) as Obj;
      expect(request.arrayProperties.size).toBe(12);
      expect(request.parameters).toEqual({ input: 's3://lab/raw/vol.ome.zarr', output: 's3://lab/den/vol.zarr', shardCount: '12' });
      expect(request.jobDefinition).toBe(definition.jobDefinitionName);
      expect(request.jobName).toMatch(/^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$/);
      expect(request.containerOverrides.environment).toEqual([{ name: 'BLINDSPOT_MODEL_URL', value: 's3://lab/models/m' }]);
      const one = spawnSync('bash', [script, '1', 's3://a/b', 's3://a/c', 's3://a/m'], { env, encoding: 'utf8' });
      expect(one.status).toBe(ExitCode.usage);
      expect(one.stdout).toBe('');
      const local = spawnSync('bash', [script, '4', '/data/vol.zarr', 's3://a/c', 's3://a/m'], { env, encoding: 'utf8' });
      expect(local.status).toBe(ExitCode.usage);
      expect(local.stdout).toBe('');
    } finally {
      await fs.rm(fakeBin, { recursive: true, force: true });
    }
  });
});

describe('container images', () => {
  it('GPU training image: webgpu through Vulkan (the loader and the graphics capability), no CUDA or TensorFlow', () => {
    const { stages, comments } = expectImage('infra/docker/Dockerfile.gpu');
    for (const stage of stages) expect(stage.image, 'no CUDA base: Vulkan needs none').not.toMatch(/cuda/i);
    expect(stages.at(-1)!.image).toMatch(/^node:\d+\.\d+\.\d+-bookworm-slim$/);
    const webgpuVersion = (JSON.parse(read('package.json')) as { optionalDependencies: Record<string, string> }).optionalDependencies['webgpu'];
    expect(comments).toContain(`webgpu ${webgpuVersion}`);
    const runs = stages.flatMap((s) => s.instructions).filter((i) => i.op === 'RUN').map((i) => i.args).join('\n');
    expect(runs).toMatch(/install -y[^\n]*\blibvulkan1\b/);
    expect(runs).not.toMatch(/tfjs-node/);
    const env = stages.at(-1)!.instructions.filter((i) => i.op === 'ENV').map((i) => i.args).join('\n');
    expect(env).toMatch(/NVIDIA_DRIVER_CAPABILITIES=\S*graphics/);
  });

  it('CPU image: pinned node bookworm-slim runtime, tfjs-node optional at the tfjs-core version, no GPU binding', () => {
    const { stages } = expectImage('infra/docker/Dockerfile.cpu');
    expect(stages.at(-1)!.image).toMatch(/^node:\d+\.\d+\.\d+-bookworm-slim$/);
    const runs = stages.flatMap((s) => s.instructions).filter((i) => i.op === 'RUN').map((i) => i.args).join('\n');
    expect(runs).not.toMatch(/tfjs-node-gpu/);
    expect(runs).toMatch(/npm install --no-save[^\n]* @tensorflow\/tfjs-node@\$\{TFJS_NODE_VERSION\}/);
    expect(runs).toMatch(/WITH_TFJS_NODE/);
    const args = stages.flatMap((s) => s.instructions).filter((i) => i.op === 'ARG').map((i) => i.args);
    const core = (JSON.parse(read('package.json')) as { dependencies: Record<string, string> }).dependencies['@tensorflow/tfjs-core'];
    expect(args).toContain(`TFJS_NODE_VERSION=${core}`);
  });

  it('images and manifests run as the same non-root uid', () => {
    expect(imageUid('infra/docker/Dockerfile.gpu')).toBe(imageUid('infra/docker/Dockerfile.cpu'));
    expect(imageUid('infra/docker/Dockerfile.onnx-gpu')).toBe(imageUid('infra/docker/Dockerfile.cpu'));
  });

  it('the build keeps what it compiles and runs: .dockerignore, and no runtime import of test/ or bench/', () => {
    const ignored = read('.dockerignore')
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l && !l.startsWith('#'));
    for (const heavy of ['node_modules', 'dist', '.git', 'demo-output', 'bench/results']) expect(ignored).toContain(heavy);
    const tsconfig = JSON.parse(read('tsconfig.json')) as { include: string[] };
    const needed = ['package.json', 'package-lock.json', 'tsconfig.json', 'infra/docker/entrypoint.sh', ...tsconfig.include];
    for (const p of needed) {
      for (const pattern of ignored) expect(p === pattern || p.startsWith(pattern + '/'), `.dockerignore '${pattern}' drops ${p}`).toBe(false);
    }
    // The images delete dist/test and dist/bench.
    const runtimeDirs = tsconfig.include.filter((d) => !['test', 'bench', 'vitest.config.ts'].includes(d));
    const offenders: string[] = [];
    for (const dir of runtimeDirs) {
      for (const file of readdirSync(path.join(ROOT, dir), { recursive: true }).map(String)) {
        if (!file.endsWith('.ts')) continue;
        const text = read(path.join(dir, file));
        if (/from\s+'(\.\.\/)+(test|bench)\//.test(text) || /import\(\s*'(\.\.\/)+(test|bench)\//.test(text)) offenders.push(`${dir}/${file}`);
      }
    }
    expect(offenders).toEqual([]);
  });

  it('entrypoint: valid sh; fetches the model only when asked, then execs blindspot with the arguments unchanged', async () => {
    const script = path.join(ROOT, 'infra/docker/entrypoint.sh');
    for (const shell of ['sh', 'bash']) expect(spawnSync(shell, ['-n', script]).status, shell).toBe(0);
    const text = read('infra/docker/entrypoint.sh');
    // The fetch script is where the image's dist/ puts infra/fetchModel.ts.
    const fetchPath = /node (\/app\/dist\/infra\/\w+\.js)/.exec(text)?.[1];
    expect(fetchPath).toBe('/app/dist/infra/fetchModel.js');
    expect(existsSync(path.join(ROOT, 'infra/fetchModel.ts'))).toBe(true);

    const fakeBin = await fs.mkdtemp(path.join(os.tmpdir(), 'blindspot-entry-'));
    try {
      // Stands in for the installed CLI: prints its arguments and exits 130, like an interrupted run.
      await fs.writeFile(path.join(fakeBin, 'blindspot'), '#!/bin/sh\nfor a in "$@"; do printf "<%s>\\n" "$a"; done\nexit 130\n', { mode: 0o755 });
      const env = { PATH: `${fakeBin}:/usr/bin:/bin` };
      const r = spawnSync('sh', [script, 'denoise', '/scratch/model', 'a b.zarr', '--json'], { env, encoding: 'utf8' });
      expect(r.stdout).toBe('<denoise>\n</scratch/model>\n<a b.zarr>\n<--json>\n');
      expect(r.status, 'the CLI exit code passes through').toBe(ExitCode.interrupted);
    } finally {
      await fs.rm(fakeBin, { recursive: true, force: true });
    }
  });
});

describe('fetchModelFolder', () => {
  let tmp: string;
  const files: Record<string, Uint8Array> = {
    'model.json': new TextEncoder().encode('{"modelTopology":{}}'),
    'weights.bin': Uint8Array.from({ length: 4096 }, (_, i) => (i * 31) % 251),
    'blindspot.json': new TextEncoder().encode('{"method":"n2v"}'),
    'noise/nlf.json': new TextEncoder().encode('{"a":1}'),
    'checkpoint/optimizer.bin': new Uint8Array(100),
  };
  const writeFolder = async (dir: string, entries: Record<string, Uint8Array>): Promise<void> => {
    for (const [name, bytes] of Object.entries(entries)) {
      await fs.mkdir(path.dirname(path.join(dir, name)), { recursive: true });
      await fs.writeFile(path.join(dir, name), bytes);
    }
  };
  const listing = async (dir: string): Promise<string[]> => (await fs.readdir(dir, { recursive: true, withFileTypes: true })).filter((d) => d.isFile()).map((d) => path.relative(dir, path.join(d.parentPath, d.name))).sort();

  beforeAll(async () => {
    tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'blindspot-fetch-'));
    await writeFolder(path.join(tmp, 'src'), files);
  });
  afterAll(async () => {
    await fs.rm(tmp, { recursive: true, force: true });
  });

  it('copies a model folder (without a training checkpoint), records its source, and reuses a finished copy', async () => {
    expect(REQUIRED_MODEL_FILES).toEqual(['model.json', 'weights.bin', 'blindspot.json']);
    const dest = path.join(tmp, 'scratch', 'model');
    const first = await fetchModelFolder(path.join(tmp, 'src'), dest);
    expect(first.reused).toBe(false);
    expect(first.files).toBe(4);
    expect(first.bytes).toBe(Object.entries(files).filter(([n]) => !n.startsWith('checkpoint/')).reduce((s, [, b]) => s + b.length, 0));
    expect(await listing(dest)).toEqual([FETCH_RECORD, 'blindspot.json', 'model.json', 'noise/nlf.json', 'weights.bin'].sort());
    for (const name of ['model.json', 'weights.bin', 'blindspot.json', 'noise/nlf.json']) expect(new Uint8Array(await fs.readFile(path.join(dest, name)))).toEqual(files[name]);
    // No staging folder left beside it.
    expect(await fs.readdir(path.join(tmp, 'scratch'))).toEqual(['model']);

    const again = await fetchModelFolder(path.join(tmp, 'src'), dest);
    expect(again.reused).toBe(true);
    expect(again.bytes).toBe(first.bytes);

    await expect(fetchModelFolder(path.join(tmp, 'elsewhere'), dest)).rejects.toBeInstanceOf(OutputError);
  });

  it('refuses a source without a model and a non-empty destination, leaving nothing behind', async () => {
    await writeFolder(path.join(tmp, 'half'), { 'model.json': files['model.json'] });
    const dest = path.join(tmp, 'scratch2', 'model');
    const err = await fetchModelFolder(path.join(tmp, 'half'), dest).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InputError);
    expect(String((err as Error).message)).toMatch(/weights\.bin, blindspot\.json missing/);
    expect(existsSync(path.join(tmp, 'scratch2')) ? await fs.readdir(path.join(tmp, 'scratch2')) : []).toEqual([]);
    await expect(fetchModelFolder(path.join(tmp, 'absent'), dest)).rejects.toBeInstanceOf(InputError);

    const busy = path.join(tmp, 'busy');
    await writeFolder(busy, { 'notes.txt': new Uint8Array([1]) });
    await expect(fetchModelFolder(path.join(tmp, 'src'), busy)).rejects.toBeInstanceOf(OutputError);
    expect(await fs.readdir(busy)).toEqual(['notes.txt']);
  });

  it('stops when aborted, leaving no folder that looks like a model', async () => {
    const controller = new AbortController();
    controller.abort();
    const dest = path.join(tmp, 'scratch3', 'model');
    await expect(fetchModelFolder(path.join(tmp, 'src'), dest, { signal: controller.signal })).rejects.toThrow();
    expect(existsSync(dest)).toBe(false);
    expect(existsSync(path.join(tmp, 'scratch3')) ? await fs.readdir(path.join(tmp, 'scratch3')) : []).toEqual([]);
  });

  const skipS3 = !swiftAvailable();
  if (skipS3) console.log(`infra.test: S3 fetch skipped: ${SWIFT_MISSING_MESSAGE}`);
  describe.skipIf(skipS3)('from S3 (local Swift)', () => {
    let s3: LocalS3;
    beforeAll(async () => {
      s3 = await startLocalS3({ buckets: ['blindspot-models'], exportCredentials: true });
    }, 120_000);
    afterAll(async () => {
      await s3?.stop();
    });

    it('copies the objects under the prefix and nothing beside it', async () => {
      const store = new S3Store('s3://blindspot-models/models/vol', { endpoint: s3.endpoint });
      for (const [name, bytes] of Object.entries(files)) await store.set(`/${name}`, bytes);
      // A neighbour whose name extends the prefix must not be copied.
      const neighbour = new S3Store('s3://blindspot-models/models/vol2', { endpoint: s3.endpoint });
      await neighbour.set('/model.json', new Uint8Array([9]));
      await store.close();
      await neighbour.close();

      const dest = path.join(tmp, 's3scratch', 'model');
      const result = await fetchModelFolder('s3://blindspot-models/models/vol', dest, { s3: { endpoint: s3.endpoint } });
      expect(result.files).toBe(4);
      expect(await listing(dest)).toEqual([FETCH_RECORD, 'blindspot.json', 'model.json', 'noise/nlf.json', 'weights.bin'].sort());
      expect(new Uint8Array(await fs.readFile(path.join(dest, 'weights.bin')))).toEqual(files['weights.bin']);
      expect(new Uint8Array(await fs.readFile(path.join(dest, 'model.json')))).toEqual(files['model.json']);
      await expect(fetchModelFolder('s3://blindspot-models/models/none', path.join(tmp, 's3none', 'model'), { s3: { endpoint: s3.endpoint } })).rejects.toBeInstanceOf(InputError);
    });
  });
});

describe('infra/README.md', () => {
  it('documents the exit codes the CLI uses and the index variables it reads', () => {
    const readme = read('infra/README.md');
    for (const [name, code] of Object.entries(ExitCode)) expect(readme, `exit code ${name}`).toMatch(new RegExp(`\\|\\s*${code}\\s*\\|`));
    for (const variable of SHARD_INDEX_VARIABLES) expect(readme).toContain(variable);
    for (const file of ['Dockerfile.gpu', 'Dockerfile.cpu', 'indexed-job.yaml', 'cronjob.yaml', 'secret.example.yaml', 'batch-job-definition.json', 'submit-array-job.sh']) expect(readme).toContain(file);
  });
});
