/**
 * Where a path or URL really is, and whether an output would be, contain or lie inside an input.
 *
 * Path strings are not locations: a symbolic link, `..`, a hard link or a second mount name the same
 * file differently. A local path is resolved to the real path of its nearest existing ancestor (every
 * link on the way followed) plus the not-yet-existing rest, and, where it exists, its device and inode.
 * An S3 URL is its bucket and its prefix with duplicate, leading and trailing slashes removed.
 * Every command that writes asks `assertOutputOutsideInputs` before it writes anything.
 */
import { constants as fsConstants, promises as fs } from 'node:fs';
import path from 'node:path';
import { OutputError } from '../core/errors.js';

export type Location =
  | { kind: 'local'; given: string; real: string; dev: number | null; ino: number | null; isDirectory: boolean }
  | { kind: 's3'; given: string; bucket: string; prefix: string };

/** How `output` stands to `input`. */
export type Overlap = 'same' | 'inside' | 'contains' | 'disjoint';

function isS3(url: string): boolean {
  return /^s3:\/\//i.test(url);
}

/** `s3://bucket//a/b/` -> { bucket, prefix 'a/b' }. */
export function s3Location(url: string): { bucket: string; prefix: string } {
  const rest = url.replace(/^s3:\/\//i, '');
  const slash = rest.indexOf('/');
  const bucket = (slash < 0 ? rest : rest.slice(0, slash)).toLowerCase();
  const prefix = (slash < 0 ? '' : rest.slice(slash + 1))
    .split('/')
    .filter((s) => s !== '' && s !== '.')
    .join('/');
  return { bucket, prefix };
}

/** Resolves `target` (relative to the working directory) to its real location; never throws for a missing path. */
export async function resolveLocation(target: string): Promise<Location> {
  if (isS3(target)) return { kind: 's3', given: target, ...s3Location(target) };
  const absolute = path.resolve(target);
  const rest: string[] = [];
  let existing = absolute;
  let real: string | null = null;
  for (;;) {
    try {
      real = await fs.realpath(existing);
      break;
    } catch {
      const parent = path.dirname(existing);
      if (parent === existing) break;
      rest.unshift(path.basename(existing));
      existing = parent;
    }
  }
  const full = path.join(real ?? existing, ...rest);
  let dev: number | null = null;
  let ino: number | null = null;
  let isDirectory = false;
  if (rest.length === 0) {
    try {
      const stat = await fs.stat(full);
      dev = stat.dev;
      ino = stat.ino;
      isDirectory = stat.isDirectory();
    } catch {
      // Unreadable: the real path alone decides.
    }
  }
  return { kind: 'local', given: target, real: full, dev, ino, isDirectory };
}

function within(inner: string, outer: string, sep: string): boolean {
  if (outer === '') return true;
  return inner.startsWith(outer.endsWith(sep) ? outer : outer + sep);
}

/** How location `output` stands to location `input` (different kinds never overlap). */
export function overlapOf(output: Location, input: Location): Overlap {
  if (output.kind === 's3' && input.kind === 's3') {
    if (output.bucket !== input.bucket) return 'disjoint';
    if (output.prefix === input.prefix) return 'same';
    if (within(output.prefix, input.prefix, '/')) return 'inside';
    if (within(input.prefix, output.prefix, '/')) return 'contains';
    return 'disjoint';
  }
  if (output.kind === 'local' && input.kind === 'local') {
    // A hard link or a bind mount: another name for the very same file or folder.
    if (output.real === input.real || (output.ino !== null && output.dev === input.dev && output.ino === input.ino)) return 'same';
    if (within(output.real, input.real, path.sep)) return 'inside';
    if (within(input.real, output.real, path.sep)) return 'contains';
  }
  return 'disjoint';
}

export interface OutputCheck {
  /** Refuse an output folder that holds an input (default true: streamed, watch; false for a folder of per-file outputs). */
  refuseContaining?: boolean;
  /** What the output is, for the message ('--out', 'the model folder'...). */
  what?: string;
}

/**
 * Refuses (OutputError, exit 4) an output that is an input, lies inside one or (unless allowed)
 * contains one, comparing real locations: a symbolic link to the input, or to its folder, is caught.
 * Call it before creating or writing anything.
 */
export async function assertOutputOutsideInputs(output: string, inputs: readonly string[], check: OutputCheck = {}): Promise<void> {
  const out = await resolveLocation(output);
  for (const input of inputs) {
    const overlap = overlapOf(out, await resolveLocation(input));
    if (overlap === 'disjoint' || (overlap === 'contains' && check.refuseContaining === false)) continue;
    const relation = overlap === 'same' ? 'is' : overlap === 'inside' ? 'lies inside' : 'contains';
    const real = out.kind === 'local' && out.real !== path.resolve(output) ? ` (really ${out.real})` : '';
    throw new OutputError(output, `${check.what ?? 'the output'}${real} ${relation} the input ${input}; it would overwrite the input: choose an output outside it`);
  }
}

/** Whether the two paths or URLs name the same place (after links). */
export async function sameLocation(a: string, b: string): Promise<boolean> {
  return overlapOf(await resolveLocation(a), await resolveLocation(b)) === 'same';
}

/** A one-line reason for a file-system error code, for messages. */
export function describeFsError(err: unknown): string {
  const code = (err as NodeJS.ErrnoException)?.code;
  switch (code) {
    case 'EACCES':
    case 'EPERM':
      return 'permission denied';
    case 'EEXIST':
      return 'exists already (as a file)';
    case 'ENOTDIR':
      return 'a part of the path is a file, not a folder';
    case 'EISDIR':
      return 'is a folder, not a file';
    case 'ENOENT':
      return 'does not exist';
    case 'EROFS':
      return 'is on a read-only file system';
    case 'ENOSPC':
      return 'no space left on the device';
    case 'EDQUOT':
      return 'disk quota exceeded';
    case 'ELOOP':
      return 'too many levels of symbolic links';
    case 'ENAMETOOLONG':
      return 'the name is too long';
    default:
      return (err as Error)?.message ?? String(err);
  }
}

/**
 * Refuses (OutputError) a local output folder that cannot be made or written: its nearest existing
 * ancestor must be a folder this process may write into. S3 outputs pass (checked by their first write).
 */
export async function assertWritableFolder(dir: string): Promise<void> {
  if (isS3(dir)) return;
  let existing = path.resolve(dir);
  for (;;) {
    try {
      const stat = await fs.stat(existing);
      if (!stat.isDirectory()) {
        throw new OutputError(dir, existing === path.resolve(dir) ? 'exists and is a file, not a folder' : `cannot be made: ${existing} is a file, not a folder`);
      }
      break;
    } catch (err) {
      if (err instanceof OutputError) throw err;
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT') throw new OutputError(dir, `cannot be used: ${describeFsError(err)}`, { cause: err });
      const parent = path.dirname(existing);
      if (parent === existing) break;
      existing = parent;
    }
  }
  try {
    await fs.access(existing, fsConstants.W_OK | fsConstants.X_OK);
  } catch (err) {
    throw new OutputError(dir, `cannot be written: ${existing} ${describeFsError(err)}`, { cause: err });
  }
}

/** mkdir -p with the file-system's refusals as OutputErrors naming the folder. */
export async function mkdirOutput(dir: string): Promise<void> {
  try {
    await fs.mkdir(dir, { recursive: true });
  } catch (err) {
    throw new OutputError(dir, `cannot be made: ${describeFsError(err)}`, { cause: err });
  }
}
