/**
 * S3 (and S3-compatible: Swift, MinIO, Ceph) as a ByteStore rooted at `s3://bucket/prefix`.
 * Credentials come from the AWS SDK's default provider chain (environment, profiles, SSO, instance
 * and container roles). The retry loop is ours, not the SDK's, so what is retried is explicit and
 * tested: 5xx, throttling and dropped connections, with exponential backoff and full jitter.
 * Requests in flight per store are bounded.
 */
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  UploadPartCommand,
} from '@aws-sdk/client-s3';
import { NodeHttpHandler } from '@smithy/node-http-handler';
import { InputError, OutputError, UsageError } from '../core/errors.js';
import type { ByteStore, RangeQuery } from './byteStore.js';

export interface S3Settings {
  /** S3-compatible endpoint URL; default from BLINDSPOT_S3_ENDPOINT or AWS_ENDPOINT_URL_S3, else AWS. */
  endpoint?: string;
  /** Default AWS_REGION / AWS_DEFAULT_REGION, else us-east-1. */
  region?: string;
  /** Requests in flight per store (default 16). */
  maxConcurrency?: number;
  /** Attempts per request, first included (default 8, or BLINDSPOT_S3_MAX_ATTEMPTS). */
  maxAttempts?: number;
  /** Milliseconds to open a connection before the attempt fails (default 5000, or BLINDSPOT_S3_CONNECT_TIMEOUT_MS). */
  connectTimeoutMs?: number;
  /** Milliseconds a request may stay silent (no byte sent or received) before the attempt fails (default 30000, or BLINDSPOT_S3_REQUEST_TIMEOUT_MS). */
  requestTimeoutMs?: number;
  /** First backoff ceiling in ms, doubled per attempt (default 100), capped at maxBackoffMs (default 10 s). */
  baseBackoffMs?: number;
  maxBackoffMs?: number;
  /** Objects at least this large go up as multipart uploads (default 64 MiB). */
  multipartThresholdBytes?: number;
  /** Part size of multipart uploads (default 16 MiB; S3 needs >= 5 MiB for all but the last part). */
  partSizeBytes?: number;
  /** Keys per ListObjectsV2 page (default 1000, S3's maximum). */
  listPageSize?: number;
}

export function isS3Url(s: string): boolean {
  return s.startsWith('s3://');
}

export function parseS3Url(url: string): { bucket: string; prefix: string } {
  if (!isS3Url(url)) throw new InputError(url, 'is not an s3:// URL');
  const rest = url.slice('s3://'.length);
  const slash = rest.indexOf('/');
  const bucket = slash < 0 ? rest : rest.slice(0, slash);
  const prefix = slash < 0 ? '' : rest.slice(slash + 1).replace(/\/+$/, '');
  if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket)) throw new InputError(url, `'${bucket}' is not a valid S3 bucket name`);
  return { bucket, prefix };
}

/** Every S3 request's bounds, and where they are set (stated in `--help` and docs/errors.md). */
export const S3_DEFAULTS = { connectTimeoutMs: 5000, requestTimeoutMs: 30_000, maxAttempts: 8 } as const;

function envInteger(name: string, fallback: number, min: number): number {
  const text = process.env[name];
  if (text === undefined || text === '') return fallback;
  const n = Number(text);
  if (!Number.isInteger(n) || n < min) throw new UsageError(`${name} must be an integer >= ${min}, got '${text}'`);
  return n;
}

/** The bounds in force: settings, else the environment, else S3_DEFAULTS. */
export function s3Bounds(settings: S3Settings = {}): { connectTimeoutMs: number; requestTimeoutMs: number; maxAttempts: number } {
  return {
    connectTimeoutMs: settings.connectTimeoutMs ?? envInteger('BLINDSPOT_S3_CONNECT_TIMEOUT_MS', S3_DEFAULTS.connectTimeoutMs, 1),
    requestTimeoutMs: settings.requestTimeoutMs ?? envInteger('BLINDSPOT_S3_REQUEST_TIMEOUT_MS', S3_DEFAULTS.requestTimeoutMs, 1),
    maxAttempts: settings.maxAttempts ?? envInteger('BLINDSPOT_S3_MAX_ATTEMPTS', S3_DEFAULTS.maxAttempts, 1),
  };
}

/**
 * The endpoint to use (setting, else BLINDSPOT_S3_ENDPOINT, else AWS_ENDPOINT_URL_S3), checked: a
 * malformed one is a usage error naming where it came from, not a problem with the input.
 */
export function s3Endpoint(settings: S3Settings = {}): string | undefined {
  const [endpoint, origin] =
    settings.endpoint !== undefined
      ? [settings.endpoint, '--s3-endpoint']
      : process.env.BLINDSPOT_S3_ENDPOINT
        ? [process.env.BLINDSPOT_S3_ENDPOINT, 'BLINDSPOT_S3_ENDPOINT']
        : [process.env.AWS_ENDPOINT_URL_S3, 'AWS_ENDPOINT_URL_S3'];
  if (endpoint === undefined || endpoint === '') return undefined;
  let url: URL | null = null;
  try {
    url = new URL(endpoint);
  } catch {
    url = null;
  }
  if (!url || (url.protocol !== 'http:' && url.protocol !== 'https:') || !url.hostname) {
    throw new UsageError(`${origin} must be an http:// or https:// URL such as http://127.0.0.1:9000, got '${endpoint}'`);
  }
  return endpoint;
}

/** A client configured for AWS or, with an endpoint, for an S3-compatible store; every request bounded in time. */
export function createS3Client(settings: S3Settings = {}): S3Client {
  const endpoint = s3Endpoint(settings);
  const region = settings.region ?? process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION ?? 'us-east-1';
  const bounds = s3Bounds(settings);
  return new S3Client({
    region,
    maxAttempts: 1, // our loop retries
    // Without these a store that accepts the connection and never answers holds the request for ever.
    // socketTimeout is the silence bound: it fires while waiting for the answer and while its body streams
    // (smithy's requestTimeout would only warn unless told to throw, and bound a whole upload's duration).
    requestHandler: new NodeHttpHandler({ connectionTimeout: bounds.connectTimeoutMs, socketTimeout: bounds.requestTimeoutMs }),
    ...(endpoint
      ? {
          endpoint,
          forcePathStyle: true,
          // Otherwise uploads use aws-chunked framing, which S3-compatible stores (Swift) reject.
          requestChecksumCalculation: 'WHEN_REQUIRED' as const,
          responseChecksumValidation: 'WHEN_REQUIRED' as const,
        }
      : {}),
  });
}

interface ErrorLike {
  name?: string;
  code?: string;
  message?: string;
  $metadata?: { httpStatusCode?: number };
  $retryable?: unknown;
}

const RETRYABLE_CODES = new Set([
  'ECONNRESET',
  'ECONNREFUSED',
  'EPIPE',
  'ETIMEDOUT',
  'EAI_AGAIN',
  'UND_ERR_SOCKET',
  'TimeoutError',
  'RequestTimeout',
  'RequestTimeTooSkewed',
  'SlowDown',
  'Throttling',
  'ThrottlingException',
  'TooManyRequestsException',
  'InternalError',
  'ServiceUnavailable',
]);

/** Whether a failed request may succeed if sent again: 5xx, 429, throttling, dropped or timed-out connections. */
export function isRetryableS3Error(err: unknown): boolean {
  const e = err as ErrorLike;
  const status = e?.$metadata?.httpStatusCode;
  if (status !== undefined && (status >= 500 || status === 429)) return true;
  if (e?.code && RETRYABLE_CODES.has(e.code)) return true;
  // An HTTP response the client could not parse (a connection cut mid-header, a broken middlebox).
  if (e?.code && e.code.startsWith('HPE_')) return true;
  if (e?.name && RETRYABLE_CODES.has(e.name)) return true;
  const message = e?.message ?? '';
  return /socket hang up|ECONNRESET|EPIPE|ECONNREFUSED|other side closed|network|aborted|premature close|Unexpected end|Deserialization error/i.test(message);
}

/** Full-jitter exponential backoff: uniform in [0, min(max, base * 2^attempt)). */
export function backoffMs(attempt: number, baseMs: number, maxMs: number, random: () => number = Math.random): number {
  return random() * Math.min(maxMs, baseMs * 2 ** attempt);
}

/** A counting semaphore: at most `limit` holders at once, first come first served. */
class Semaphore {
  private active = 0;
  private readonly waiting: Array<() => void> = [];
  constructor(private readonly limit: number) {}
  async run<T>(task: () => Promise<T>): Promise<T> {
    if (this.active >= this.limit) await new Promise<void>((resolve) => this.waiting.push(resolve));
    this.active++;
    try {
      return await task();
    } finally {
      this.active--;
      this.waiting.shift()?.();
    }
  }
}

function statusOf(err: unknown): number | undefined {
  return (err as ErrorLike)?.$metadata?.httpStatusCode;
}

function isNotFound(err: unknown): boolean {
  const e = err as ErrorLike;
  if (e?.name === 'NoSuchBucket') return false;
  return e?.name === 'NoSuchKey' || e?.name === 'NotFound' || statusOf(err) === 404;
}

export class S3Store implements ByteStore {
  readonly url: string;
  readonly bucket: string;
  readonly prefix: string;
  /** Requests sent again after a retryable failure (for tests and logs). */
  retries = 0;
  private readonly client: S3Client;
  private readonly limiter: Semaphore;
  private readonly settings: Required<Omit<S3Settings, 'endpoint' | 'region'>>;
  /** Where requests go, for messages. */
  private readonly endpoint: string;

  constructor(url: string, settings: S3Settings = {}, client?: S3Client) {
    const { bucket, prefix } = parseS3Url(url);
    this.url = url;
    this.bucket = bucket;
    this.prefix = prefix;
    this.client = client ?? createS3Client(settings);
    this.endpoint = s3Endpoint(settings) ?? 'AWS S3';
    this.settings = {
      maxConcurrency: settings.maxConcurrency ?? 16,
      maxAttempts: s3Bounds(settings).maxAttempts,
      connectTimeoutMs: s3Bounds(settings).connectTimeoutMs,
      requestTimeoutMs: s3Bounds(settings).requestTimeoutMs,
      baseBackoffMs: settings.baseBackoffMs ?? 100,
      maxBackoffMs: settings.maxBackoffMs ?? 10_000,
      multipartThresholdBytes: settings.multipartThresholdBytes ?? 64 * 2 ** 20,
      partSizeBytes: settings.partSizeBytes ?? 16 * 2 ** 20,
      listPageSize: settings.listPageSize ?? 1000,
    };
    this.limiter = new Semaphore(this.settings.maxConcurrency);
  }

  /** Object key of a store key ('/a/b' -> 'prefix/a/b'). */
  objectKey(key: string): string {
    const relative = key.replace(/^\/+/, '');
    return this.prefix ? `${this.prefix}/${relative}` : relative;
  }

  private where(key: string): string {
    return `s3://${this.bucket}/${this.objectKey(key)}`;
  }

  /** Sends with bounded concurrency and our retry policy; non-retryable errors pass through at once. */
  private async send<T>(what: string, request: () => Promise<T>): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.limiter.run(request);
      } catch (err) {
        if (!isRetryableS3Error(err) || attempt + 1 >= this.settings.maxAttempts) throw this.describe(what, err, attempt + 1);
        this.retries++;
        await new Promise((r) => setTimeout(r, backoffMs(attempt, this.settings.baseBackoffMs, this.settings.maxBackoffMs)));
      }
    }
  }

  private describe(what: string, err: unknown, attempts: number): Error {
    if (isNotFound(err)) return err as Error;
    const e = err as ErrorLike;
    const status = statusOf(err);
    const reason = `${e?.name ?? 'Error'}${status ? ` (HTTP ${status})` : ''}: ${e?.message ?? String(err)}`;
    let hint = '';
    if (status === 403 || e?.name === 'InvalidAccessKeyId' || e?.name === 'SignatureDoesNotMatch' || e?.name === 'CredentialsProviderError') {
      hint = '; check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or an instance role)';
    } else if (e?.name === 'NoSuchBucket') {
      hint = `; bucket '${this.bucket}' does not exist`;
    } else if (attempts > 1) {
      hint = `; gave up after ${attempts} attempts (each bounded by ${this.settings.connectTimeoutMs} ms to connect and ${this.settings.requestTimeoutMs} ms of silence)`;
    }
    const message = `${what} at the endpoint ${this.endpoint} failed: ${reason}${hint}`;
    return what.startsWith('reading') ? new InputError(this.url, message, { cause: err }) : new OutputError(this.url, message, { cause: err });
  }

  async get(key: string): Promise<Uint8Array | undefined> {
    return this.read(key, undefined);
  }

  async getRange(key: string, range: RangeQuery): Promise<Uint8Array | undefined> {
    const header = 'suffixLength' in range ? `bytes=-${range.suffixLength}` : `bytes=${range.offset}-${range.offset + range.length - 1}`;
    return this.read(key, header);
  }

  private async read(key: string, range: string | undefined): Promise<Uint8Array | undefined> {
    try {
      // The body is consumed inside the retried request: a connection dropped mid-body is retried too.
      return await this.send(`reading ${this.where(key)}`, async () => {
        const res = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: this.objectKey(key), Range: range }));
        if (!res.Body) return new Uint8Array(0);
        const bytes = await res.Body.transformToByteArray();
        if (res.ContentLength !== undefined && bytes.length !== res.ContentLength) {
          throw Object.assign(new Error(`short read: ${bytes.length} of ${res.ContentLength} bytes (premature close)`), { code: 'ECONNRESET' });
        }
        return bytes;
      });
    } catch (err) {
      if (isNotFound(err)) return undefined;
      // An empty object asked for a range answers 416: it has no such bytes.
      if (statusOf(err) === 416) return new Uint8Array(0);
      throw err;
    }
  }

  async set(key: string, value: Uint8Array): Promise<void> {
    if (value.length >= this.settings.multipartThresholdBytes) return this.multipartUpload(key, value);
    await this.send(`writing ${this.where(key)}`, () =>
      this.client.send(new PutObjectCommand({ Bucket: this.bucket, Key: this.objectKey(key), Body: value, ContentLength: value.length })),
    );
  }

  private async multipartUpload(key: string, value: Uint8Array): Promise<void> {
    const Key = this.objectKey(key);
    const what = `writing ${this.where(key)} (multipart)`;
    const created = await this.send(what, () => this.client.send(new CreateMultipartUploadCommand({ Bucket: this.bucket, Key })));
    const UploadId = created.UploadId;
    if (!UploadId) throw new OutputError(this.url, `${what}: the store returned no upload id`);
    try {
      const partSize = this.settings.partSizeBytes;
      const count = Math.ceil(value.length / partSize);
      const parts = await Promise.all(
        Array.from({ length: count }, async (_, i) => {
          const body = value.subarray(i * partSize, Math.min(value.length, (i + 1) * partSize));
          const res = await this.send(what, () =>
            this.client.send(new UploadPartCommand({ Bucket: this.bucket, Key, UploadId, PartNumber: i + 1, Body: body, ContentLength: body.length })),
          );
          return { ETag: res.ETag, PartNumber: i + 1 };
        }),
      );
      await this.send(what, () =>
        this.client.send(new CompleteMultipartUploadCommand({ Bucket: this.bucket, Key, UploadId, MultipartUpload: { Parts: parts } })),
      );
    } catch (err) {
      // Best effort: what cannot be aborted now is found by cleanUpInterruptedWrites later.
      await this.client.send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key, UploadId })).catch(() => undefined);
      throw err;
    }
  }

  async delete(key: string): Promise<void> {
    await this.send(`deleting ${this.where(key)}`, () => this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: this.objectKey(key) })));
  }

  async *list(prefix = '/'): AsyncIterable<string> {
    const root = this.prefix ? `${this.prefix}/` : '';
    const listPrefix = root + prefix.replace(/^\/+/, '');
    let ContinuationToken: string | undefined;
    do {
      const page = await this.send(`reading the listing of s3://${this.bucket}/${listPrefix}`, () =>
        this.client.send(new ListObjectsV2Command({ Bucket: this.bucket, Prefix: listPrefix, ContinuationToken, MaxKeys: this.settings.listPageSize })),
      );
      for (const object of page.Contents ?? []) if (object.Key !== undefined) yield '/' + object.Key.slice(root.length);
      ContinuationToken = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (ContinuationToken);
  }

  /** Aborts incomplete multipart uploads under this store's prefix (a killed writer's leftovers). */
  async cleanUpInterruptedWrites(owned?: (key: string) => boolean): Promise<number> {
    const Prefix = this.prefix ? `${this.prefix}/` : undefined;
    let aborted = 0;
    let KeyMarker: string | undefined;
    let UploadIdMarker: string | undefined;
    for (;;) {
      const page = await this.send(`writing (listing uploads of) ${this.url}`, () =>
        this.client.send(new ListMultipartUploadsCommand({ Bucket: this.bucket, Prefix, KeyMarker, UploadIdMarker })),
      );
      for (const upload of page.Uploads ?? []) {
        if (!upload.Key || !upload.UploadId) continue;
        if (owned && !owned('/' + upload.Key.slice(Prefix?.length ?? 0))) continue;
        await this.send(`writing (aborting an upload of) s3://${this.bucket}/${upload.Key}`, () =>
          this.client.send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: upload.Key, UploadId: upload.UploadId })),
        );
        aborted++;
      }
      if (!page.IsTruncated) return aborted;
      KeyMarker = page.NextKeyMarker;
      UploadIdMarker = page.NextUploadIdMarker;
    }
  }

  async close(): Promise<void> {
    this.client.destroy();
  }
}
