/**
 * A private S3 endpoint on loopback for tests and demos: OpenStack Swift with its s3api middleware
 * (Debian packages swift, swift-proxy, swift-account, swift-container, swift-object, memcached),
 * single replica, every file under one temp folder, free ports. Facts behind the settings:
 * ../shared/docs/local-s3.md.
 *
 *   node dist/infra/localS3.js      starts one, prints the endpoint and credentials, stops on Ctrl-C
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, promises as fs } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export interface LocalS3 {
  endpoint: string;
  region: string;
  accessKeyId: string;
  secretAccessKey: string;
  createBucket(name: string): Promise<void>;
  stop(): Promise<void>;
}

const BINARIES = ['swift-proxy-server', 'swift-account-server', 'swift-container-server', 'swift-object-server', 'swift-ring-builder', 'memcached'];

function binaryPath(name: string): string | null {
  for (const dir of ['/usr/bin', '/usr/sbin', '/usr/local/bin', ...(process.env.PATH ?? '').split(':')]) {
    const p = path.join(dir, name);
    if (dir && existsSync(p)) return p;
  }
  return null;
}

/** Whether the Debian Swift and memcached binaries are installed (the S3 tests skip without them). */
export function swiftAvailable(): boolean {
  return BINARIES.every((b) => binaryPath(b) !== null);
}

export const SWIFT_MISSING_MESSAGE =
  'OpenStack Swift is not installed, so the S3 tests are skipped. Install it with: ' +
  'apt-get install -y swift swift-proxy swift-account swift-container swift-object memcached (.ci/run does this)';

/** A TCP port free on 127.0.0.1 right now. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => (typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no port'))));
    });
  });
}

const ACCESS_KEY = 'test:tester';
const SECRET_KEY = 'testing';

/** What every server config shares: loopback, its port, one process, configs under `dir`. */
function defaultSection(dir: string, port: number): string {
  return `[DEFAULT]
bind_ip = 127.0.0.1
bind_port = ${port}
workers = 0
swift_dir = ${dir}/etc
log_level = WARNING
`;
}

function storageServerConf(dir: string, port: number, kind: 'account' | 'container' | 'object'): string {
  return `${defaultSection(dir, port)}devices = ${dir}/srv
mount_check = false

[pipeline:main]
pipeline = ${kind}-server

[app:${kind}-server]
use = egg:swift#${kind}

[${kind}-replicator]
[${kind}-auditor]
${kind === 'container' ? '[container-updater]\n[container-sync]\n[container-sharder]\n' : ''}${kind === 'object' ? '[object-updater]\n' : ''}`;
}

function proxyConf(dir: string, port: number, memcachePort: number): string {
  return `${defaultSection(dir, port)}
[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats s3api tempauth copy slo dlo proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true

[filter:s3api]
use = egg:swift#s3api
location = us-east-1

[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = ${SECRET_KEY} .admin

[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:${memcachePort}

[filter:catch_errors]
use = egg:swift#catch_errors
[filter:gatekeeper]
use = egg:swift#gatekeeper
[filter:healthcheck]
use = egg:swift#healthcheck
[filter:proxy-logging]
use = egg:swift#proxy_logging
[filter:listing_formats]
use = egg:swift#listing_formats
[filter:copy]
use = egg:swift#copy
[filter:slo]
use = egg:swift#slo
[filter:dlo]
use = egg:swift#dlo
`;
}

async function waitForHealth(url: string, timeoutMs: number, processes: ChildProcess[], log: () => string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const dead = processes.find((p) => p.exitCode !== null);
    if (dead) throw new Error(`local S3: ${dead.spawnfile} exited with code ${dead.exitCode}\n${log()}`);
    try {
      const res = await fetch(url);
      if (res.status === 200) return;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`local S3: ${url} not healthy after ${timeoutMs} ms\n${log()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Starts memcached, the account/container/object servers and the S3 proxy; resolves once healthy. */
/**
 * Starts Swift with s3api on loopback. `buckets` are created; `exportCredentials` puts the access key,
 * secret and region in process.env, where the AWS SDK's default chain (and child processes) find them.
 */
export async function startLocalS3(opts: { timeoutMs?: number; buckets?: string[]; exportCredentials?: boolean } = {}): Promise<LocalS3> {
  if (!swiftAvailable()) throw new Error(SWIFT_MISSING_MESSAGE);
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'blindspot-swift-'));
  const processes: ChildProcess[] = [];
  let output = '';
  const log = (): string => output.slice(-4000);
  const start = (bin: string, args: string[]): void => {
    const child = spawn(binaryPath(bin)!, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout?.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr?.on('data', (d: Buffer) => (output += d.toString()));
    processes.push(child);
  };
  const stop = async (): Promise<void> => {
    await Promise.all(
      processes.map(
        (p) =>
          new Promise<void>((resolve) => {
            if (p.exitCode !== null || p.signalCode !== null) return resolve();
            const timer = setTimeout(() => p.kill('SIGKILL'), 3000);
            p.once('exit', () => {
              clearTimeout(timer);
              resolve();
            });
            p.kill('SIGTERM');
          }),
      ),
    );
    await fs.rm(dir, { recursive: true, force: true });
  };
  try {
    await fs.mkdir(path.join(dir, 'etc'), { recursive: true });
    await fs.mkdir(path.join(dir, 'srv', 'd1'), { recursive: true });
    const [memcachePort, accountPort, containerPort, objectPort, proxyPort] = await distinctFreePorts(5);
    await fs.writeFile(
      path.join(dir, 'etc', 'swift.conf'),
      `[swift-hash]\nswift_hash_path_prefix = blindspot\nswift_hash_path_suffix = test\n\n[storage-policy:0]\nname = default\ndefault = yes\n`,
    );
    const rings = [
      ['account', accountPort],
      ['container', containerPort],
      ['object', objectPort],
    ] as const;
    buildRings(path.join(dir, 'etc'), rings);
    for (const [kind, port] of rings) await fs.writeFile(path.join(dir, 'etc', `${kind}-server.conf`), storageServerConf(dir, port, kind));
    await fs.writeFile(path.join(dir, 'etc', 'proxy-server.conf'), proxyConf(dir, proxyPort, memcachePort));
    const asRoot = typeof process.getuid === 'function' && process.getuid() === 0;
    start('memcached', ['-l', '127.0.0.1', '-p', String(memcachePort), '-U', '0', ...(asRoot ? ['-u', 'root'] : [])]);
    for (const kind of ['account', 'container', 'object'] as const) start(`swift-${kind}-server`, [path.join(dir, 'etc', `${kind}-server.conf`)]);
    start('swift-proxy-server', [path.join(dir, 'etc', 'proxy-server.conf')]);
    const endpoint = `http://127.0.0.1:${proxyPort}`;
    // 90 s: on a loaded 2-core machine Swift's four servers take well over 30 s to come up.
    await waitForHealth(`${endpoint}/healthcheck`, opts.timeoutMs ?? 90_000, processes, log);
    for (const bucket of opts.buckets ?? []) await createBucket(endpoint, bucket);
    if (opts.exportCredentials) Object.assign(process.env, { AWS_ACCESS_KEY_ID: ACCESS_KEY, AWS_SECRET_ACCESS_KEY: SECRET_KEY, AWS_REGION: 'us-east-1' });
    return {
      endpoint,
      region: 'us-east-1',
      accessKeyId: ACCESS_KEY,
      secretAccessKey: SECRET_KEY,
      createBucket: (name) => createBucket(endpoint, name),
      stop,
    };
  } catch (err) {
    await stop();
    throw err;
  }
}

// One Python process builds all three rings (about 0.6 s); nine swift-ring-builder runs take about 6 s.
const BUILD_RINGS_PY = `
import sys
from swift.common.ring import RingBuilder
etc = sys.argv[1]
for spec in sys.argv[2:]:
    kind, port = spec.split(':')
    b = RingBuilder(6, 1, 1)
    b.add_dev({'region': 1, 'zone': 1, 'ip': '127.0.0.1', 'port': int(port), 'device': 'd1', 'weight': 1})
    b.rebalance()
    b.get_ring().save(etc + '/' + kind + '.ring.gz')
    b.save(etc + '/' + kind + '.builder')
`;

/** Single-replica rings with one device each; falls back to the swift-ring-builder CLI. */
function buildRings(etc: string, rings: ReadonlyArray<readonly [string, number]>): void {
  const ringBuilder = binaryPath('swift-ring-builder')!;
  // The interpreter Swift is installed for (its shebang), not whatever python3 is first on PATH.
  const shebang = readFileSync(ringBuilder, 'utf8').split('\n', 1)[0];
  const python = shebang.startsWith('#!') ? shebang.slice(2).trim().split(/\s+/)[0] : '/usr/bin/python3';
  const fast = spawnSync(python, ['-c', BUILD_RINGS_PY, etc, ...rings.map(([kind, port]) => `${kind}:${port}`)], { encoding: 'utf8' });
  if (fast.status === 0) return;
  for (const [kind, port] of rings) {
    const builder = path.join(etc, `${kind}.builder`);
    for (const args of [
      [builder, 'create', '6', '1', '1'],
      [builder, 'add', `r1z1-127.0.0.1:${port}/d1`, '1'],
      [builder, 'rebalance'],
    ]) {
      const r = spawnSync(ringBuilder, args, { encoding: 'utf8' });
      // rebalance exits 1 with a warning on a one-device ring; only 2 is a failure.
      if (r.status !== 0 && r.status !== 1) throw new Error(`swift-ring-builder ${args.slice(1).join(' ')} failed: ${r.stderr || r.stdout}`);
    }
  }
}

async function distinctFreePorts(n: number): Promise<number[]> {
  const ports = new Set<number>();
  while (ports.size < n) ports.add(await freePort());
  return [...ports];
}

/** Creates a bucket through the S3 API (the SDK is loaded lazily so this module stays light). */
async function createBucket(endpoint: string, name: string): Promise<void> {
  const { S3Client, CreateBucketCommand } = await import('@aws-sdk/client-s3');
  const client = new S3Client({
    endpoint,
    region: 'us-east-1',
    forcePathStyle: true,
    credentials: { accessKeyId: ACCESS_KEY, secretAccessKey: SECRET_KEY },
  });
  try {
    // A freshly started Swift may answer 503 ("reduce your request rate") while its rings warm up, for
    // tens of seconds on a loaded machine: retry for about a minute.
    for (let attempt = 0; ; attempt++) {
      try {
        await client.send(new CreateBucketCommand({ Bucket: name }));
        return;
      } catch (err) {
        const e = err as { name?: string; $metadata?: { httpStatusCode?: number } };
        if (e.name === 'BucketAlreadyOwnedByYou' || e.name === 'BucketAlreadyExists') return;
        if ((e.$metadata?.httpStatusCode ?? 0) < 500 || attempt >= 25) throw err;
        await new Promise((r) => setTimeout(r, 100 * 2 ** Math.min(attempt, 5)));
      }
    }
  } finally {
    client.destroy();
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  const s3 = await startLocalS3();
  console.log(`S3 endpoint ${s3.endpoint}  region ${s3.region}`);
  console.log(`AWS_ACCESS_KEY_ID=${s3.accessKeyId} AWS_SECRET_ACCESS_KEY=${s3.secretAccessKey}`);
  console.log('Ctrl-C stops it and removes its files.');
  const shutdown = (): void => void s3.stop().then(() => process.exit(0));
  process.on('SIGINT', shutdown);
  process.on('SIGTERM', shutdown);
}
