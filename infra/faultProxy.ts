/**
 * An HTTP proxy on loopback that fails a seeded fraction of requests the way real object stores and
 * networks do: 500 InternalError, 503 SlowDown, or the connection reset mid-request; on request, also
 * 'stall' (the response headers are sent, then nothing more: the client's request timeout must fire)
 * and 'truncate' (the upstream's body is cut short and the connection closed). Everything else
 * is forwarded unchanged (the Host header too, so SigV4 signatures made for the proxy's address still
 * verify at the store, which checks the Host it receives).
 */
import http from 'node:http';
import { Rng } from '../core/rng.js';

export type FaultKind = 'http-500' | 'http-503' | 'reset' | 'stall' | 'truncate';

export interface FaultProxyStats {
  forwarded: number;
  failed: Record<FaultKind, number>;
}

export interface FaultProxy {
  endpoint: string;
  stats: FaultProxyStats;
  stop(): Promise<void>;
}

const ERROR_BODY = (code: string, message: string): string =>
  `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${code}</Code><Message>${message}</Message><RequestId>fault-proxy</RequestId></Error>`;

export async function startFaultProxy(target: string, opts: { failureRate: number; seed?: number; kinds?: FaultKind[] }): Promise<FaultProxy> {
  const targetUrl = new URL(target);
  const rng = new Rng(opts.seed ?? 1);
  const stats: FaultProxyStats = { forwarded: 0, failed: { 'http-500': 0, 'http-503': 0, reset: 0, stall: 0, truncate: 0 } };
  const kinds: FaultKind[] = opts.kinds ?? ['http-500', 'http-503', 'reset'];

  const server = http.createServer((req, res) => {
    if (rng.uniform() < opts.failureRate) {
      const kind = kinds[rng.int(kinds.length)];
      stats.failed[kind]++;
      if (kind === 'truncate') {
        // Forward, but send only half of the upstream's body (its full Content-Length announced), then close.
        const upstream = http.request({ host: targetUrl.hostname, port: targetUrl.port, method: req.method, path: req.url, headers: req.headers }, (upstreamRes) => {
          const parts: Buffer[] = [];
          upstreamRes.on('data', (b: Buffer) => parts.push(b));
          upstreamRes.on('end', () => {
            const body = Buffer.concat(parts);
            const { 'transfer-encoding': _chunked, ...headers } = upstreamRes.headers;
            res.writeHead(upstreamRes.statusCode ?? 502, { ...headers, 'content-length': String(body.length) });
            res.write(body.subarray(0, body.length >> 1));
            setTimeout(() => req.socket.destroy(), 5);
          });
        });
        upstream.on('error', () => req.socket.destroy());
        req.pipe(upstream);
        return;
      }
      if (kind === 'stall') {
        // Accept and never answer: the connection stays open until the client gives up.
        req.resume();
        return;
      }
      // Read the request first so the client is mid-exchange when it fails, as a real store would be.
      req.resume();
      req.on('end', () => {
        if (kind === 'reset') {
          req.socket.destroy();
          return;
        }
        const [status, code] = kind === 'http-500' ? [500, 'InternalError'] : [503, 'SlowDown'];
        res.writeHead(status, { 'content-type': 'application/xml' });
        res.end(ERROR_BODY(code, `injected by the fault proxy`));
      });
      return;
    }
    stats.forwarded++;
    const upstream = http.request(
      { host: targetUrl.hostname, port: targetUrl.port, method: req.method, path: req.url, headers: req.headers },
      (upstreamRes) => {
        res.writeHead(upstreamRes.statusCode ?? 502, upstreamRes.headers);
        upstreamRes.pipe(res);
      },
    );
    upstream.on('error', () => req.socket.destroy());
    req.pipe(upstream);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  if (typeof address !== 'object' || !address) throw new Error('fault proxy: no address');
  return {
    endpoint: `http://127.0.0.1:${address.port}`,
    stats,
    stop: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
