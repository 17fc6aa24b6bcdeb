/**
 * Broken, silent and hostile S3 endpoints: a loopback server that accepts connections and never
 * answers (the run must give up after the documented timeouts and retries, naming the endpoint), a
 * closed port, wrong credentials (the secret never printed), missing and corrupt objects on a real
 * S3-compatible store (Swift, infra/localS3.ts; skipped with a message when absent).
 */
import { existsSync, promises as fs } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { PACKAGE_ROOT } from '../../core/version.js';
import { freePort, SWIFT_MISSING_MESSAGE, startLocalS3, swiftAvailable, type LocalS3 } from '../../infra/localS3.js';
import { S3Store } from '../../storage/s3.js';
import { cli, cliProcess, expectOutcome, plantSecret, SECRET, ACCESS_KEY } from './harness.js';
import { makeFixtures, type Fixtures } from './fixtures.js';

let f: Fixtures;
let restoreEnv: () => void;
const root = path.join(os.tmpdir(), `blindspot-adversarial-s3-${process.pid}`);
let silent: net.Server;
let silentEndpoint = '';
const sockets = new Set<net.Socket>();
/** Short bounds, so a silent endpoint costs seconds; the defaults are the same mechanism at 5 s / 30 s / 8 attempts. */
const FAST = { BLINDSPOT_S3_CONNECT_TIMEOUT_MS: '400', BLINDSPOT_S3_REQUEST_TIMEOUT_MS: '400', BLINDSPOT_S3_MAX_ATTEMPTS: '2' };

beforeAll(async () => {
  restoreEnv = plantSecret();
  await fs.rm(root, { recursive: true, force: true });
  f = await makeFixtures(root);
  // Accepts every connection, reads what is sent, answers nothing.
  silent = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.resume();
  });
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
  silentEndpoint = `http://127.0.0.1:${(silent.address() as net.AddressInfo).port}`;
});

afterAll(async () => {
  restoreEnv();
  for (const s of sockets) s.destroy();
  await new Promise<void>((resolve) => silent.close(() => resolve()));
  await fs.rm(root, { recursive: true, force: true });
});

describe('an endpoint that accepts connections and never answers', () => {
  const built = existsSync(path.join(PACKAGE_ROOT, 'dist', 'cli', 'main.js'));
  test.skipIf(!built)('denoise (a separate process): gives up after the timeouts and retries, exit 3 naming the endpoint', async () => {
    const out = path.join(root, 'silent-out.zarr');
    const r = await cliProcess(['denoise', f.model, 's3://lab/raw/vol.zarr', '--out', out, '--s3-endpoint', silentEndpoint, '--backend', 'cpu'], { env: FAST, timeoutMs: 60_000 });
    expect(r.killed, r.stderr).toBe(false);
    await expectOutcome(r, { code: 3, mentions: [silentEndpoint, 's3://lab/raw/vol.zarr'], says: /gave up after 2 attempts/, outputs: [out], maxMs: 60_000 });
  });
  const inProcess: Array<[string, () => string[]]> = [
    ['train', () => ['train', 's3://lab/raw/vol.zarr', '--out', path.join(root, 'silent-model'), '--patch', '16x16', '--steps', '1', '--s3-endpoint', silentEndpoint, '--backend', 'cpu']],
    ['plan', () => ['plan', 's3://lab/raw/vol.zarr', '--model', f.model, '--no-measure', '--s3-endpoint', silentEndpoint, '--backend', 'cpu']],
    ['denoise to a local output', () => ['denoise', f.model, 's3://lab/raw/vol.zarr', '--out', path.join(root, 'silent-local.zarr'), '--s3-endpoint', silentEndpoint, '--backend', 'cpu']],
  ];
  for (const [name, args] of inProcess) {
    test(`${name}: exit 3 naming the endpoint within the bounds`, async () => {
      const r = await cli(args(), FAST);
      await expectOutcome(r, { code: 3, mentions: [silentEndpoint], says: /TimeoutError|timed out/, outputs: [path.join(root, 'silent-model'), path.join(root, 'silent-local.zarr')], maxMs: 20_000 });
    });
  }
  test('watch an S3 prefix on it: exit 3 or 4 naming the endpoint, bounded', async () => {
    const r = await cli(['watch', 's3://lab/incoming', '--model', f.model, '--out', path.join(root, 'silent-watch'), '--once', '--s3-endpoint', silentEndpoint, '--backend', 'cpu'], FAST);
    expect([3, 4], r.stderr).toContain(r.code);
    expect(r.stderr).toContain(silentEndpoint);
    expect(r.ms).toBeLessThan(30_000);
    expect(r.stdout + r.stderr).not.toContain(SECRET);
  });
  test('the S3 store itself: one request bounded by the request timeout, retried, then an error naming the endpoint', async () => {
    const store = new S3Store('s3://lab/x', { endpoint: silentEndpoint, requestTimeoutMs: 300, connectTimeoutMs: 300, maxAttempts: 3, baseBackoffMs: 1 });
    const t0 = performance.now();
    await expect(store.get('/zarr.json')).rejects.toThrow(new RegExp(`${silentEndpoint}.*gave up after 3 attempts`));
    const ms = performance.now() - t0;
    expect(store.retries).toBe(2);
    expect(ms).toBeGreaterThan(800);
    expect(ms).toBeLessThan(10_000);
    await store.close();
  });
});

describe('a closed port', () => {
  test('denoise: exit 3 naming the endpoint after the retries', async () => {
    const endpoint = `http://127.0.0.1:${await freePort()}`;
    const r = await cli(['denoise', f.model, 's3://lab/raw/vol.zarr', '--out', path.join(root, 'closed.zarr'), '--s3-endpoint', endpoint, '--backend', 'cpu'], FAST);
    await expectOutcome(r, { code: 3, mentions: [endpoint], says: /ECONNREFUSED|refused/, outputs: [path.join(root, 'closed.zarr')] });
  });
});

if (!swiftAvailable()) console.log(`adversarial s3: Swift cases skipped: ${SWIFT_MISSING_MESSAGE}`);

describe.skipIf(!swiftAvailable())('a real S3-compatible store (Swift on loopback)', () => {
  let s3: LocalS3;
  beforeAll(async () => {
    s3 = await startLocalS3({ buckets: ['adv'], timeoutMs: 100_000 });
    const env = { AWS_ACCESS_KEY_ID: s3.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.secretAccessKey, AWS_REGION: s3.region };
    // A corrupt zarr.json and a v3 array with a truncated raw chunk, put there with the right credentials.
    const saved = { ...process.env };
    Object.assign(process.env, env);
    try {
      const corrupt = new S3Store('s3://adv/corrupt.zarr', { endpoint: s3.endpoint });
      await corrupt.set('/zarr.json', new TextEncoder().encode('{"zarr_format": 3, "node_'));
      await corrupt.close();
    } finally {
      for (const k of Object.keys(env)) {
        if (saved[k] === undefined) delete process.env[k];
        else process.env[k] = saved[k];
      }
    }
  }, 180_000);
  afterAll(async () => {
    await s3?.stop();
  });
  const good = (): Record<string, string> => ({ AWS_ACCESS_KEY_ID: s3.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.secretAccessKey, AWS_REGION: s3.region });

  test('wrong credentials (a secret in the environment): exit 3 naming the endpoint and the credentials, the secret never printed', async () => {
    const r = await cli(['denoise', f.model, 's3://adv/corrupt.zarr', '--out', path.join(root, 'cred.zarr'), '--s3-endpoint', s3.endpoint, '--backend', 'cpu'], { AWS_ACCESS_KEY_ID: ACCESS_KEY, AWS_SECRET_ACCESS_KEY: SECRET, AWS_REGION: s3.region });
    await expectOutcome(r, { code: 3, mentions: [s3.endpoint], says: /credentials|403|Access|Signature/i, outputs: [path.join(root, 'cred.zarr')] });
  });
  test('a missing input: exit 3 naming it', async () => {
    const r = await cli(['denoise', f.model, 's3://adv/missing.zarr', '--out', path.join(root, 'missing.zarr'), '--s3-endpoint', s3.endpoint, '--backend', 'cpu'], good());
    await expectOutcome(r, { code: 3, mentions: ['s3://adv/missing.zarr'], outputs: [path.join(root, 'missing.zarr')] });
  });
  test('a corrupt zarr.json on S3: exit 3 naming the object', async () => {
    const r = await cli(['plan', 's3://adv/corrupt.zarr', '--model', f.model, '--no-measure', '--s3-endpoint', s3.endpoint, '--backend', 'cpu'], good());
    await expectOutcome(r, { code: 3, mentions: ['s3://adv/corrupt.zarr/zarr.json'], says: /JSON/ });
  });
  test('a missing bucket: exit 3 or 4 naming it', async () => {
    const r = await cli(['denoise', f.model, f.zarr3, '--out', 's3://nobucket/out.zarr', '--s3-endpoint', s3.endpoint, '--backend', 'cpu', '--max-memory', '256MiB'], good());
    expect([3, 4], r.stderr).toContain(r.code);
    expect(r.stderr).toContain('nobucket');
    expect(r.stderr).not.toMatch(/unexpected error/);
  });
});
