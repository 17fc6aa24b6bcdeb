/**
 * The byte store behind a path or URL (S3 or a local folder). Its own module so that the formats
 * (storage/ome.ts) can open stores without importing storage/open.ts, which opens the formats.
 */
import type { ByteStore } from './byteStore.js';
import { FileSystemStore } from './fsStore.js';
import { S3Store, isS3Url, type S3Settings } from './s3.js';

/** The byte store at `url`: S3 for s3:// URLs, else the local folder (file:// accepted). */
export function openByteStore(url: string, s3?: S3Settings): ByteStore {
  if (isS3Url(url)) return new S3Store(url, s3);
  const local = url.startsWith('file://') ? new URL(url).pathname : url;
  return new FileSystemStore(local);
}
