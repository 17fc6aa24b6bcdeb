/**
 * The S3 ByteStore against a real S3-compatible server: OpenStack Swift with s3api on loopback,
 * started here and stopped after. Skips with a message when Swift is not installed.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFaultProxy } from '../infra/faultProxy.js';
import { startLocalS3, swiftAvailable, SWIFT_MISSING_MESSAGE, type LocalS3 } from '../infra/localS3.js';
import { Rng } from '../core/rng.js';
import { backoffMs, isRetryableS3Error, parseS3Url, S3Store } from '../storage/s3.js';

describe('S3 URLs and the retry policy', () => {
  it('parses bucket and prefix and rejects bad bucket names', () => {
    expect(parseS3Url('s3://my-bucket/a/b/vol.zarr/')).toEqual({ bucket: 'my-bucket', prefix: 'a/b/vol.zarr' });
    expect(parseS3Url('s3://my-bucket')).toEqual({ bucket: 'my-bucket', prefix: '' });
    expect(() => parseS3Url('s3://B_ad/x')).toThrow(/not a valid S3 bucket name/);
  });
  it('retries 5xx, throttling and dropped connections, not client errors', () => {
    const withStatus = (s: number, name = 'Error') => Object.assign(new Error('x'), { name, $metadata: { httpStatusCode: s } });
    expect(isRetryableS3Error(withStatus(500))).toBe(true);
    expect(isRetryableS3Error(withStatus(503, 'SlowDown'))).toBe(true);
    expect(isRetryableS3Error(withStatus(429))).toBe(true);
    expect(isRetryableS3Error(Object.assign(new Error('socket hang up'), { code: 'ECONNRESET' }))).toBe(true);
    expect(isRetryableS3Error(withStatus(403, 'AccessDenied'))).toBe(false);
    expect(isRetryableS3Error(withStatus(404, 'NoSuchKey'))).toBe(false);
  });
  it('backs off exponentially with full jitter, capped', () => {
    expect(backoffMs(0, 100, 10_000, () => 0.999)).toBeLessThan(100);
    expect(backoffMs(3, 100, 10_000, () => 0.999)).toBeGreaterThan(790);
    expect(backoffMs(20, 100, 10_000, () => 0.999)).toBeLessThan(10_000);
    expect(backoffMs(5, 100, 10_000, () => 0)).toBe(0);
  });
});

const skip = !swiftAvailable();
if (skip) console.log(`s3.test: skipped: ${SWIFT_MISSING_MESSAGE}`);

describe.skipIf(skip)('S3Store on a local Swift', () => {
  let s3: LocalS3;
  beforeAll(async () => {
    s3 = await startLocalS3({ buckets: ['blindspot-test'], exportCredentials: true });
  }, 120_000);
  afterAll(async () => {
    await s3?.stop();
  });

  const store = (prefix: string, extra = {}) => new S3Store(`s3://blindspot-test/${prefix}`, { endpoint: s3.endpoint, ...extra });

  it('round-trips objects, ranges, missing keys, deletes and paginated listings', async () => {
    const st = store('rt/vol.zarr', { listPageSize: 4 });
    const bytes = Uint8Array.from({ length: 1000 }, (_, i) => (i * 7) % 256);
    await st.set('/zarr.json', bytes);
    expect(await st.get('/zarr.json')).toEqual(bytes);
    expect(await st.getRange('/zarr.json', { offset: 10, length: 5 })).toEqual(bytes.subarray(10, 15));
    expect(await st.getRange('/zarr.json', { suffixLength: 16 })).toEqual(bytes.subarray(984));
    expect(await st.get('/absent')).toBeUndefined();
    expect(await st.getRange('/absent', { suffixLength: 4 })).toBeUndefined();
    for (let i = 0; i < 10; i++) await st.set(`/c/0/${i}`, new Uint8Array([i]));
    const keys: string[] = [];
    for await (const k of st.list('/c/')) keys.push(k);
    expect(keys.sort()).toEqual(Array.from({ length: 10 }, (_, i) => `/c/0/${i}`).sort());
    await st.delete('/c/0/3');
    expect(await st.get('/c/0/3')).toBeUndefined();
    // A sibling prefix is not part of this store's listing.
    await store('rt/vol.zarr2').set('/x', new Uint8Array([1]));
    const all: string[] = [];
    for await (const k of st.list()) all.push(k);
    expect(all).not.toContain('/x');
    await st.close();
  });

  it('uploads large objects in parts and aborts incomplete uploads left by a killed writer', async () => {
    const st = store('mp', { multipartThresholdBytes: 6 * 2 ** 20, partSizeBytes: 5 * 2 ** 20 });
    const big = new Uint8Array(11 * 2 ** 20 + 17);
    for (let i = 0; i < big.length; i++) big[i] = (i * 31) % 251;
    await st.set('/big', big);
    const back = await st.get('/big');
    // Buffer.compare: a deep equal over 11 MB is slow.
    expect(back && Buffer.compare(Buffer.from(back), Buffer.from(big))).toBe(0);
    // Leave an upload incomplete, as a SIGKILLed writer would.
    const { CreateMultipartUploadCommand } = await import('@aws-sdk/client-s3');
    const client = (st as unknown as { client: { send(c: unknown): Promise<unknown> } }).client;
    await client.send(new CreateMultipartUploadCommand({ Bucket: 'blindspot-test', Key: 'mp/left-behind' }));
    expect(await st.cleanUpInterruptedWrites()).toBe(1);
    expect(await st.cleanUpInterruptedWrites()).toBe(0);
    await st.close();
  });

  it('names the URL and the cause when the bucket does not exist', async () => {
    const st = new S3Store('s3://no-such-bucket-here/x', { endpoint: s3.endpoint, maxAttempts: 2 });
    await expect(st.set('/a', new Uint8Array([1]))).rejects.toThrow(/s3:\/\/no-such-bucket-here\/x.*NoSuchBucket/s);
    await st.close();
  });

  it('completes every request through a proxy failing 15% of them, with identical bytes', async () => {
    const proxy = await startFaultProxy(s3.endpoint, { failureRate: 0.15, seed: 7 });
    try {
      const st = new S3Store('s3://blindspot-test/faulty', { endpoint: proxy.endpoint, baseBackoffMs: 5 });
      const rng = new Rng(3);
      for (let i = 0; i < 50; i++) {
        const bytes = Uint8Array.from({ length: 200 + rng.int(5000) }, () => rng.int(256));
        await st.set(`/obj/${i}`, bytes);
        expect(await st.get(`/obj/${i}`)).toEqual(bytes);
      }
      const failed = proxy.stats.failed;
      expect(failed['http-500'] + failed['http-503'] + failed.reset).toBeGreaterThan(5);
      expect(failed.reset).toBeGreaterThan(0);
      expect(st.retries).toBe(failed['http-500'] + failed['http-503'] + failed.reset);
      await st.close();
    } finally {
      await proxy.stop();
    }
  });
});
