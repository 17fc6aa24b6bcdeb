/**
 * Turns command-line inputs (files, folders, globs) into a list of image files. Each input
 * expands in natural order (frame2 before frame10), inputs keep the order given, duplicates
 * are dropped. Hidden files (.name) are skipped in folders and globs, as a shell would.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { InputError } from '../core/errors.js';
import { isSupportedImage, supportedExtensions } from './formats.js';

const naturalOrder = new Intl.Collator('en', { numeric: true, sensitivity: 'variant' });

function compareNames(a: string, b: string): number {
  return naturalOrder.compare(a, b) || (a < b ? -1 : a > b ? 1 : 0);
}

function globToRegExp(pattern: string): RegExp {
  const escaped = pattern.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '[^/]*').replace(/\?/g, '[^/]');
  return new RegExp(`^${escaped}$`);
}

async function statOrNull(p: string): Promise<import('node:fs').Stats | null> {
  try {
    return await fsp.stat(p);
  } catch {
    return null;
  }
}

/** Regular, non-hidden, supported image files in `dir` whose names satisfy `accept`, naturally sorted. */
async function imagesIn(dir: string, accept: (name: string) => boolean): Promise<string[]> {
  const entries = await fsp.readdir(dir, { withFileTypes: true });
  const names: string[] = [];
  for (const entry of entries) {
    if (entry.name.startsWith('.') || !accept(entry.name) || !isSupportedImage(entry.name)) continue;
    const full = path.join(dir, entry.name);
    const isFile = entry.isFile() || (entry.isSymbolicLink() && (await statOrNull(full))?.isFile());
    if (isFile) names.push(entry.name);
  }
  return names.sort(compareNames).map((name) => path.join(dir, name));
}

export async function expandInputs(inputs: string[]): Promise<string[]> {
  const seen = new Set<string>();
  const result: string[] = [];
  const add = (file: string): void => {
    const key = path.resolve(file);
    if (!seen.has(key)) {
      seen.add(key);
      result.push(file);
    }
  };
  const extensions = supportedExtensions.join(' ');
  for (const input of inputs) {
    const dir = path.dirname(input);
    const last = path.basename(input);
    if (/[*?]/.test(dir)) throw new InputError(input, 'wildcards (* and ?) are supported only in the last path segment');
    if (/[*?]/.test(last)) {
      const dirStat = await statOrNull(dir);
      if (!dirStat?.isDirectory()) throw new InputError(input, `matches nothing: folder ${dir} does not exist`);
      const pattern = globToRegExp(last);
      const files = await imagesIn(dir, (name) => pattern.test(name));
      if (files.length === 0) throw new InputError(input, `matches no supported image (${extensions})`);
      files.forEach(add);
      continue;
    }
    const stat = await statOrNull(input);
    if (!stat) throw new InputError(input, 'does not exist');
    if (stat.isDirectory()) {
      const files = await imagesIn(input, () => true);
      if (files.length === 0) throw new InputError(input, `is a folder with no supported images (${extensions})`);
      files.forEach(add);
    } else if (stat.isFile()) {
      add(input);
    } else {
      throw new InputError(input, 'is not a regular file or folder');
    }
  }
  return result;
}
