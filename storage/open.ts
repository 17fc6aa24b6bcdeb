/**
 * Inputs and outputs named by URL or path: `data/vol.zarr`, `s3://bucket/prefix/vol.zarr`,
 * `stack.tif`, a folder of 2D frames. One place decides which back end reads what.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { ByteStore } from './byteStore.js';
import type { ChunkedArrayReader } from './chunked.js';
import { FileSystemStore } from './fsStore.js';
import { isS3Url, type S3Settings } from './s3.js';
import { openZarrArray } from './zarr.js';
import { openOmeZarr, spatialView } from './ome.js';
import { openTiffStack } from './tiffStack.js';
import { openFrameFolder } from './frameFolder.js';
import { InputError } from '../core/errors.js';
import { openByteStore } from './openStore.js';

export { openByteStore };

export interface OpenSourceOptions {
  channel?: number;
  time?: number;
  s3?: S3Settings;
  /** A path inside a Zarr group naming the array to read (plain Zarr groups need it). */
  arrayPath?: string;
}

const ZARR_MARKERS = ['/zarr.json', '/.zarray', '/.zattrs', '/.zgroup'];

async function looksLikeZarr(url: string, store: ByteStore): Promise<boolean> {
  if (/\.zarr\/?$/i.test(url)) return true;
  for (const key of ZARR_MARKERS) if (await store.get(key)) return true;
  return false;
}

async function openZarrSource(url: string, store: ByteStore, opts: OpenSourceOptions): Promise<ChunkedArrayReader> {
  const choice = { channel: opts.channel, time: opts.time };
  if (opts.arrayPath) return spatialView(await openZarrArray(store, { arrayPath: opts.arrayPath }), choice);
  const ome = await openOmeZarr(store, choice);
  if (ome) return ome;
  if (await store.get('/zarr.json')) {
    const root = JSON.parse(new TextDecoder().decode(await store.get('/zarr.json'))) as { node_type?: string };
    if (root.node_type === 'group') throw new InputError(url, 'is a Zarr group without OME multiscales metadata; name the array inside it');
  } else if (!(await store.get('/.zarray'))) {
    if (await store.get('/.zgroup')) throw new InputError(url, 'is a Zarr group without OME multiscales metadata; name the array inside it');
    throw new InputError(url, 'has no Zarr metadata (zarr.json or .zarray): not a Zarr array, or it does not exist');
  }
  return spatialView(await openZarrArray(store, {}), choice);
}

/**
 * Opens any supported chunked source: Zarr v2/v3 (plain or OME-Zarr; OME: level 0 at the chosen
 * channel/time), a .tif/.tiff stack (ImageJ hyperstack or OME-TIFF: at the chosen channel/time), or
 * a folder of 2D frames (as Z). Anything else: InputError.
 */
export async function openChunkedSource(url: string, opts: OpenSourceOptions = {}): Promise<ChunkedArrayReader> {
  if (isS3Url(url)) {
    const store = openByteStore(url, opts.s3);
    if (!(await looksLikeZarr(url, store))) throw new InputError(url, 'is not a Zarr array or OME-Zarr (no zarr.json, .zarray or .zattrs); only Zarr is read from S3');
    return openZarrSource(url, store, opts);
  }
  const local = url.startsWith('file://') ? new URL(url).pathname : url;
  let stat;
  try {
    stat = await fs.stat(local);
  } catch {
    throw new InputError(url, 'does not exist');
  }
  if (/\.tiff?$/i.test(local)) {
    if (!stat.isFile()) throw new InputError(url, 'is named like a TIFF file but is not a file');
    // ImageJ hyperstacks and OME-TIFFs have channels and time points to choose from; plain stacks accept 0.
    return openTiffStack(local, { channel: opts.channel, time: opts.time });
  }
  if (!stat.isDirectory()) throw new InputError(url, 'is neither a Zarr folder, a .tif/.tiff stack nor a folder of frames');
  const store = new FileSystemStore(local);
  if (await looksLikeZarr(local, store)) return openZarrSource(url, store, opts);
  const entries = await fs.readdir(local);
  if (!entries.some((name) => /\.(png|tiff?|fits?|fts)$/i.test(name))) {
    throw new InputError(url, 'is a folder with no Zarr metadata and no image frames (PNG/TIFF/FITS)');
  }
  if (opts.channel !== undefined || opts.time !== undefined) throw new InputError(url, 'is a folder of frames; --channel and --time apply to OME-Zarr inputs only');
  return openFrameFolder(path.resolve(local));
}
