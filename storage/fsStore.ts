/**
 * A ByteStore rooted at a local folder. Writes are atomic: the bytes go to a temp file in the same
 * folder (same filesystem, so rename is atomic), are fsynced, then renamed over the key. A process
 * killed mid-write leaves only a temp file, which `cleanUpInterruptedWrites` removes; readers never
 * see a torn object.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import type { ByteStore, RangeQuery } from './byteStore.js';

/** Temp files are `.<name>.tmp-<pid>-<random>`: hidden, and recognisable as ours. */
const TEMP_MARKER = '.tmp-';

export function isTempFileName(name: string): boolean {
  return name.startsWith('.') && name.includes(TEMP_MARKER);
}

/** The key a temp file `.<name>.tmp-<pid>-<random>` was going to become. */
function targetKeyOfTempFile(root: string, file: string): string {
  const name = path.basename(file);
  const target = name.slice(1, name.lastIndexOf(TEMP_MARKER));
  return '/' + path.relative(root, path.join(path.dirname(file), target)).split(path.sep).join('/');
}

function isMissing(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException)?.code;
  return code === 'ENOENT' || code === 'ENOTDIR';
}

export class FileSystemStore implements ByteStore {
  readonly url: string;
  readonly root: string;

  constructor(root: string) {
    this.url = root;
    this.root = path.resolve(root);
  }

  /** '/a/b' (or 'a/b') -> absolute file path inside the root; refuses keys escaping it. */
  private filePath(key: string): string {
    const relative = key.replace(/^\/+/, '');
    const full = path.resolve(this.root, relative);
    if (full !== this.root && !full.startsWith(this.root + path.sep)) {
      throw new Error(`key ${key} lies outside the store ${this.url}`);
    }
    return full;
  }

  async get(key: string): Promise<Uint8Array | undefined> {
    try {
      const buffer = await fs.readFile(this.filePath(key));
      return new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.byteLength);
    } catch (err) {
      if (isMissing(err) || (err as NodeJS.ErrnoException)?.code === 'EISDIR') return undefined;
      throw err;
    }
  }

  async getRange(key: string, range: RangeQuery): Promise<Uint8Array | undefined> {
    let handle: fs.FileHandle;
    try {
      handle = await fs.open(this.filePath(key), 'r');
    } catch (err) {
      if (isMissing(err)) return undefined;
      throw err;
    }
    try {
      const size = (await handle.stat()).size;
      let offset: number;
      let length: number;
      if ('suffixLength' in range) {
        length = Math.min(range.suffixLength, size);
        offset = size - length;
      } else {
        offset = Math.min(range.offset, size);
        length = Math.max(0, Math.min(range.length, size - offset));
      }
      const out = new Uint8Array(length);
      let done = 0;
      while (done < length) {
        const { bytesRead } = await handle.read(out, done, length - done, offset + done);
        if (bytesRead === 0) break;
        done += bytesRead;
      }
      return done === length ? out : out.subarray(0, done);
    } finally {
      await handle.close();
    }
  }

  async set(key: string, value: Uint8Array): Promise<void> {
    const target = this.filePath(key);
    const dir = path.dirname(target);
    await fs.mkdir(dir, { recursive: true });
    const temp = path.join(dir, `.${path.basename(target)}${TEMP_MARKER}${process.pid}-${randomBytes(6).toString('hex')}`);
    const handle = await fs.open(temp, 'w');
    try {
      await handle.writeFile(value);
      await handle.sync();
    } catch (err) {
      await handle.close();
      await fs.rm(temp, { force: true });
      throw err;
    }
    await handle.close();
    try {
      await fs.rename(temp, target);
    } catch (err) {
      await fs.rm(temp, { force: true });
      throw err;
    }
  }

  async delete(key: string): Promise<void> {
    await fs.rm(this.filePath(key), { force: true });
  }

  async *list(prefix = ''): AsyncIterable<string> {
    const start = this.filePath(prefix.replace(/\/+$/, ''));
    // A prefix may name a folder or a part of a name; walk from the deepest existing folder.
    const walkRoot = (await isDirectory(start)) ? start : path.dirname(start);
    const wanted = '/' + prefix.replace(/^\/+/, '');
    for await (const file of walk(walkRoot)) {
      if (isTempFileName(path.basename(file))) continue;
      const key = '/' + path.relative(this.root, file).split(path.sep).join('/');
      if (key.startsWith(wanted)) yield key;
    }
  }

  async cleanUpInterruptedWrites(owned?: (key: string) => boolean): Promise<number> {
    let removed = 0;
    for await (const file of walk(this.root, true)) {
      const name = path.basename(file);
      if (isTempFileName(name)) {
        if (owned && !owned(targetKeyOfTempFile(this.root, file))) continue;
        await fs.rm(file, { force: true });
        removed++;
      }
    }
    return removed;
  }
}

async function isDirectory(p: string): Promise<boolean> {
  try {
    return (await fs.stat(p)).isDirectory();
  } catch (err) {
    if (isMissing(err)) return false;
    throw err;
  }
}

/** Regular files under `dir`, recursively, in sorted order (missing dir: nothing). */
async function* walk(dir: string, includeHidden = true): AsyncIterable<string> {
  let entries;
  try {
    entries = await fs.readdir(dir, { withFileTypes: true });
  } catch (err) {
    if (isMissing(err)) return;
    throw err;
  }
  entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  for (const entry of entries) {
    if (!includeHidden && entry.name.startsWith('.')) continue;
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) yield* walk(full, includeHidden);
    else if (entry.isFile()) yield full;
  }
}
