/**
 * Where a watch writes whole-file outputs: under a staging name, then renamed into place (one PUT
 * on S3), so a killed watcher never leaves a torn output.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { OutputError } from '../core/errors.js';
import type { SampleType, Volume } from '../core/volume.js';
import type { ByteStore } from '../storage/byteStore.js';
import { writeImage } from '../storage/index.js';
import { openByteStore } from '../storage/open.js';
import { isS3Url, type S3Settings } from '../storage/s3.js';
import { isMissing } from './watchSources.js';

export const STAGING_DIR = '.blindspot-watch/staging';

let stagedCount = 0;

export interface WatchSink {
  readonly url: string;
  /** Byte store at the output root (state, and S3 outputs). */
  readonly store: ByteStore;
  urlOf(rel: string): string;
  exists(rel: string): Promise<boolean>;
  /** Stores an image under `rel` atomically, replacing what is there. */
  writeImage(rel: string, volume: Volume, sampleType: SampleType): Promise<void>;
  /** Removes what a killed watcher left half-written. */
  cleanUp(): Promise<void>;
  close(): Promise<void>;
}

export class LocalSink implements WatchSink {
  readonly store: ByteStore;
  readonly root: string;
  constructor(readonly url: string) {
    this.root = path.resolve(url);
    this.store = openByteStore(url);
  }
  urlOf(rel: string): string {
    return path.join(this.root, ...rel.split('/'));
  }
  async exists(rel: string): Promise<boolean> {
    try {
      await fs.stat(this.urlOf(rel));
      return true;
    } catch (err) {
      if (isMissing(err)) return false;
      throw err;
    }
  }
  async writeImage(rel: string, volume: Volume, sampleType: SampleType): Promise<void> {
    // Encoded under a staging name (same filesystem), then renamed: readers see no output or a whole one.
    const staging = path.join(this.root, STAGING_DIR);
    await fs.mkdir(staging, { recursive: true });
    const staged = path.join(staging, `${process.pid}-${stagedCount++}-${path.posix.basename(rel)}`);
    await writeImage(staged, volume, { sampleType, overwrite: true });
    const target = this.urlOf(rel);
    await fs.mkdir(path.dirname(target), { recursive: true });
    try {
      await fs.rename(staged, target);
    } catch (err) {
      await fs.rm(staged, { force: true });
      throw new OutputError(target, `could not be written: ${(err as Error).message}`, { cause: err });
    }
  }
  async cleanUp(): Promise<void> {
    await fs.rm(path.join(this.root, STAGING_DIR), { recursive: true, force: true });
    await this.store.cleanUpInterruptedWrites();
  }
  async close(): Promise<void> {}
}

export class S3Sink implements WatchSink {
  readonly store: ByteStore;
  constructor(
    readonly url: string,
    s3?: S3Settings,
  ) {
    this.store = openByteStore(url, s3);
  }
  urlOf(rel: string): string {
    return `${this.url.replace(/\/+$/, '')}/${rel}`;
  }
  async exists(rel: string): Promise<boolean> {
    return (await this.store.getRange('/' + rel, { offset: 0, length: 1 })) !== undefined;
  }
  async writeImage(rel: string, volume: Volume, sampleType: SampleType): Promise<void> {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'blindspot-watch-out-'));
    try {
      const staged = path.join(dir, path.posix.basename(rel));
      await writeImage(staged, volume, { sampleType, overwrite: true });
      // One PUT (or a completed multipart upload): the object appears whole or not at all.
      await this.store.set('/' + rel, new Uint8Array(await fs.readFile(staged)));
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  }
  async cleanUp(): Promise<void> {
    await this.store.cleanUpInterruptedWrites();
  }
  async close(): Promise<void> {
    await this.store.close?.();
  }
}

export function openSink(url: string, s3?: S3Settings): WatchSink {
  return isS3Url(url) ? new S3Sink(url, s3) : new LocalSink(url);
}
