/**
 * Where a watch finds items: a local folder or an S3 prefix, listed with each item's signature
 * (size and mtime; S3: size and ETag; a Zarr: file count, bytes and latest mtime).
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ListObjectsV2Command } from '@aws-sdk/client-s3';
import { InputError } from '../core/errors.js';
import type { ByteStore } from '../storage/byteStore.js';
import { isSupportedImage } from '../storage/index.js';
import { S3Store, createS3Client, isS3Url, parseS3Url, type S3Settings } from '../storage/s3.js';
import { FileSystemStore } from '../storage/fsStore.js';
import { type ItemSignature } from './watchState.js';

export interface ListedEntry {
  key: string;
  signature: ItemSignature;
}

export interface Scan {
  /** Image files by key. */
  files: ListedEntry[];
  /** Zarr roots (`.zarr` folders or prefixes); signature only where `detail` asked for it. */
  zarrs: ListedEntry[];
  /** Every non-hidden file key (markers are looked up here). */
  names: Set<string>;
}

export interface WatchSource {
  readonly url: string;
  /** A listed object is whole (S3): it is complete on sight. */
  readonly atomicObjects: boolean;
  scan(detail: (zarrKey: string) => boolean): Promise<Scan>;
  urlOf(key: string): string;
  /** A local file with the item's bytes (downloaded for S3), removed by `release` where it is a copy. */
  localCopy(key: string): Promise<{ file: string; release: () => Promise<void> }>;
  /** The item's signature now, where cheap to learn (local files); null otherwise. */
  currentSignature(key: string): Promise<ItemSignature | null>;
  /** The store of a Zarr item (its metadata is read every poll: shares this source's connections, needs no closing). */
  zarrStore(key: string): ByteStore;
  close(): Promise<void>;
}

export function isMissing(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException)?.code;
  return code === 'ENOENT' || code === 'ENOTDIR';
}

export const isZarrName = (name: string): boolean => /\.zarr$/i.test(name);

export class LocalSource implements WatchSource {
  readonly atomicObjects = false;
  readonly root: string;
  constructor(readonly url: string) {
    this.root = path.resolve(url);
  }

  urlOf(key: string): string {
    return path.join(this.root, ...key.split('/'));
  }

  async scan(detail: (zarrKey: string) => boolean): Promise<Scan> {
    const scan: Scan = { files: [], zarrs: [], names: new Set() };
    const visit = async (dir: string, prefix: string): Promise<void> => {
      let entries;
      try {
        entries = await fs.readdir(dir, { withFileTypes: true });
      } catch (err) {
        if (isMissing(err)) return;
        throw new InputError(dir, `cannot be listed: ${(err as Error).message}`, { cause: err });
      }
      entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
      for (const entry of entries) {
        if (entry.name.startsWith('.')) continue;
        const key = prefix + entry.name;
        const full = path.join(dir, entry.name);
        if (entry.isDirectory()) {
          if (isZarrName(entry.name)) scan.zarrs.push({ key, signature: detail(key) ? await folderSignature(full) : { size: 0, mtimeMs: null } });
          else await visit(full, key + '/');
        } else if (entry.isFile()) {
          scan.names.add(key);
          if (!isSupportedImage(entry.name)) continue;
          const signature = await fileSignature(full);
          if (signature) scan.files.push({ key, signature });
        }
      }
    };
    await visit(this.root, '');
    return scan;
  }

  async localCopy(key: string): Promise<{ file: string; release: () => Promise<void> }> {
    return { file: this.urlOf(key), release: async () => undefined };
  }

  currentSignature(key: string): Promise<ItemSignature | null> {
    return fileSignature(this.urlOf(key));
  }

  zarrStore(key: string): ByteStore {
    return new FileSystemStore(this.urlOf(key));
  }

  async close(): Promise<void> {}
}

export async function fileSignature(file: string): Promise<ItemSignature | null> {
  try {
    const stat = await fs.stat(file);
    return { size: stat.size, mtimeMs: stat.mtimeMs };
  } catch (err) {
    if (isMissing(err)) return null; // Gone between listing and stat (renamed by its writer).
    throw err;
  }
}

/** Files, bytes and newest mtime of everything under `dir`, hidden temp files included (they mean: being written). */
export async function folderSignature(dir: string): Promise<ItemSignature> {
  const signature = { size: 0, mtimeMs: 0, files: 0 };
  const walk = async (d: string): Promise<void> => {
    let entries;
    try {
      entries = await fs.readdir(d, { withFileTypes: true });
    } catch (err) {
      if (isMissing(err)) return;
      throw err;
    }
    for (const entry of entries) {
      const full = path.join(d, entry.name);
      if (entry.isDirectory()) await walk(full);
      else if (entry.isFile()) {
        const s = await fileSignature(full);
        if (!s) continue;
        signature.files++;
        signature.size += s.size;
        signature.mtimeMs = Math.max(signature.mtimeMs, s.mtimeMs ?? 0);
      }
    }
  };
  await walk(dir);
  return signature;
}

export class S3Source implements WatchSource {
  readonly atomicObjects = true;
  private readonly client;
  private readonly bucket: string;
  private readonly prefix: string;
  private readonly store: ByteStore;
  constructor(
    readonly url: string,
    private readonly s3?: S3Settings,
  ) {
    const { bucket, prefix } = parseS3Url(url);
    this.bucket = bucket;
    this.prefix = prefix;
    this.client = createS3Client(s3);
    this.store = new S3Store(url, s3, this.client);
  }

  urlOf(key: string): string {
    return `s3://${this.bucket}/${this.prefix ? `${this.prefix}/` : ''}${key}`;
  }

  async scan(): Promise<Scan> {
    const scan: Scan = { files: [], zarrs: [], names: new Set() };
    const root = this.prefix ? `${this.prefix}/` : '';
    const zarrs = new Map<string, Required<Pick<ItemSignature, 'size' | 'files'>> & { mtimeMs: number }>();
    let ContinuationToken: string | undefined;
    do {
      let page;
      try {
        page = await this.client.send(new ListObjectsV2Command({ Bucket: this.bucket, Prefix: root, ContinuationToken }));
      } catch (err) {
        throw new InputError(this.url, `cannot be listed: ${(err as Error).message}`, { cause: err });
      }
      for (const object of page.Contents ?? []) {
        if (object.Key === undefined) continue;
        const key = object.Key.slice(root.length);
        const parts = key.split('/');
        const size = object.Size ?? 0;
        const mtimeMs = object.LastModified ? object.LastModified.getTime() : 0;
        const zarrAt = parts.findIndex((p, i) => i < parts.length - 1 && isZarrName(p));
        if (zarrAt >= 0) {
          const zarrKey = parts.slice(0, zarrAt + 1).join('/');
          if (parts.slice(0, zarrAt + 1).some((p) => p.startsWith('.'))) continue;
          const z = zarrs.get(zarrKey) ?? { size: 0, files: 0, mtimeMs: 0 };
          z.size += size;
          z.files++;
          z.mtimeMs = Math.max(z.mtimeMs, mtimeMs);
          zarrs.set(zarrKey, z);
          continue;
        }
        if (parts.some((p) => p.startsWith('.') || p === '')) continue;
        scan.names.add(key);
        if (isSupportedImage(key)) scan.files.push({ key, signature: { size, mtimeMs, ...(object.ETag ? { etag: object.ETag } : {}) } });
      }
      ContinuationToken = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (ContinuationToken);
    for (const [key, signature] of zarrs) scan.zarrs.push({ key, signature });
    return scan;
  }

  async localCopy(key: string): Promise<{ file: string; release: () => Promise<void> }> {
    const bytes = await this.store.get('/' + key);
    if (!bytes) throw new InputError(this.urlOf(key), 'does not exist (removed after it was listed)');
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'blindspot-watch-'));
    const file = path.join(dir, path.posix.basename(key));
    await fs.writeFile(file, bytes);
    return { file, release: () => fs.rm(dir, { recursive: true, force: true }) };
  }

  async currentSignature(): Promise<ItemSignature | null> {
    return null; // Objects do not change in place: a new PUT is a new listing entry.
  }

  zarrStore(key: string): ByteStore {
    return new S3Store(this.urlOf(key), this.s3, this.client);
  }

  async close(): Promise<void> {
    // One client serves the listing, the object reads and the Zarr metadata.
    this.client.destroy();
  }
}

export function openSource(url: string, s3?: S3Settings): WatchSource {
  return isS3Url(url) ? new S3Source(url, s3) : new LocalSource(url);
}
