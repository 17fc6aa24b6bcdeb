/**
 * The report page: one HTML file with everything inlined (uPlot's script and stylesheet read from
 * node_modules at report time, tiles as PNG data URIs, the report data as JSON), and a Content
 * Security Policy that forbids every network request, so it opens from disk, offline, anywhere.
 * Tables and text are rendered here; plots and the tile viewer by report/client.ts in the browser.
 * Every number shown carries its exact value in `data-value` (what the JSON logs hold) beside the
 * rounded text, so tests can check the page against the logs.
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { CLIENT_SCRIPT } from './client.js';
import type { ReportData, StreamSection, TileImage } from './types.js';

/** uPlot (MIT), bundled offline: its minified browser build and stylesheet. */
function uPlotAssets(): { script: string; style: string } {
  const require = createRequire(import.meta.url);
  const dist = path.dirname(require.resolve('uplot/dist/uPlot.iife.min.js'));
  return { script: readFileSync(path.join(dist, 'uPlot.iife.min.js'), 'utf8'), style: readFileSync(path.join(dist, 'uPlot.min.css'), 'utf8') };
}

/** Marks a file as a blindspot report: only such a file is replaced by a new report. */
export const REPORT_GENERATOR = 'blindspot report';

export function escapeHtml(s: string): string {
  return s.replace(/[<>&"']/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;', "'": '&#39;' })[c]!);
}

/** A number for people (6 significant digits, no trailing zeros) with its exact value attached. */
export function formatNumber(v: number | null | undefined, unit = ''): string {
  if (v === null || v === undefined || !Number.isFinite(v)) return `<span class="num" data-value="${v === undefined ? '' : String(v)}">${v === null || v === undefined ? 'n/a' : String(v)}</span>`;
  return `<span class="num" data-value="${v}">${roundForDisplay(v)}${unit}</span>`;
}

export function roundForDisplay(v: number): string {
  if (Number.isInteger(v)) return String(v);
  return String(Number(v.toPrecision(6)));
}

function bytes(v: number): string {
  return `${formatNumber(Math.round((v / 2 ** 20) * 10) / 10)} MiB`;
}

const STYLE = `
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d1d1f;background:#fafafa}
header{background:#12263a;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}header p{margin:4px 0 0;opacity:.8;font-family:monospace}
nav{padding:6px 24px;background:#e8edf2;position:sticky;top:0;z-index:5}nav a{margin-right:14px;color:#12263a}
section{padding:8px 24px 16px;border-bottom:1px solid #ddd}h2{font-size:17px;margin:10px 0}
table{border-collapse:collapse;margin:6px 0}td,th{padding:3px 10px;border-bottom:1px solid #e3e3e3;text-align:left;vertical-align:top}th{background:#f0f0f0}
.muted{color:#666}.note{color:#8a5a00}.plots{display:flex;flex-wrap:wrap;gap:16px}.plot{background:#fff;border:1px solid #e3e3e3;padding:6px}
.tile-head{width:0;min-width:100%}.tiles{display:flex;flex-wrap:wrap;gap:12px}.tile{background:#fff;border:1px solid #e3e3e3;margin:6px 0;padding:8px;max-width:100%}.panels{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
.panels figure{margin:0;display:flex;flex-direction:column}.panels figcaption{font-size:12px;color:#555;width:0;min-width:100%}.view{overflow:auto;max-width:520px;max-height:520px;border:1px solid #ccc;background:#000}
.compare{position:relative;line-height:0}.compare img,.panels img{image-rendering:pixelated;display:block}
.compare img.after{position:absolute;left:0;top:0}.controls{margin-top:6px;display:flex;flex-wrap:wrap;gap:10px;align-items:center;font-size:13px;width:0;min-width:100%}.controls input[type=range]{width:100px}
.bar{display:inline-block;width:160px;height:10px;background:#ddd;vertical-align:middle}.bar i{display:block;height:100%;background:#2c7be5}
code{font-size:12px;word-break:break-all}
`;

function tilesSection(images: TileImage[]): string {
  if (images.length === 0) return '<p class="muted">No denoised output to compare (a model folder): nothing to show.</p>';
  return images
    .map((image, i) => {
      const three = image.shape.length === 3;
      const tiles = image.tiles
        .map((tile, t) => {
          const side = tile.shape.at(-1)!;
          const zoom = [8, 4, 2, 1].find((z) => z * side <= 320) ?? 1;
          const middle = Math.floor(tile.z.length / 2);
          const noisy = tile.noisy.length > 0;
          return `<div class="tile" data-image="${i}" data-tile="${t}" data-zoom="${zoom}">
<div class="tile-head"><b>${escapeHtml(tile.label)}</b> <span class="muted">${escapeHtml(tile.reason)}; origin ${tile.origin.join(', ')} (${three ? 'ZYX' : 'YX'}), ${tile.shape.join('x')} voxels at full resolution</span></div>
<div class="panels">
<figure><div class="view"><div class="compare">${noisy ? '<img class="before" alt="noisy">' : ''}<img class="after" alt="denoised"></div></div><figcaption>${noisy ? 'left of the split: noisy, right: denoised' : 'denoised (input unreadable)'}</figcaption></figure>
${noisy ? '<figure><div class="view"><img class="residual" alt="residual"></div><figcaption>residual noisy - denoised (grey 0, ±' + formatNumber(image.residualRange) + ')</figcaption></figure>' : ''}
${tile.uncertainty ? '<figure><div class="view"><img class="uncertainty" alt="uncertainty"></div><figcaption>posterior standard deviation (0 to ' + formatNumber(image.uncertaintyRange) + ')</figcaption></figure>' : ''}
</div>
<div class="controls">
${noisy ? '<label>split <input type="range" class="split" min="0" max="100" value="50"></label><button type="button" class="toggle" title="show all noisy / all denoised">toggle</button>' : ''}
<label>zoom <select class="zoom">${[1, 2, 4, 8].map((z) => `<option value="${z}"${z === zoom ? ' selected' : ''}>${z}x</option>`).join('')}</select></label>
${three ? `<label>z <input type="range" class="z" min="0" max="${tile.z.length - 1}" value="${middle}"> <span class="z-label">${tile.z[middle]}</span></label>` : ''}
</div></div>`;
        })
        .join('\n');
      return `<h3>${escapeHtml(image.name)} <span class="muted">[${image.shape.join(', ')}]</span></h3>
<p class="muted">Display window ${formatNumber(image.window[0])} to ${formatNumber(image.window[1])} (input units), the same for noisy and denoised.</p>${image.note ? `<p class="note">${escapeHtml(image.note)}</p>` : ''}
<div class="tiles">${tiles}</div>`;
    })
    .join('\n');
}

function qualitySection(data: ReportData): string {
  if (data.quality.length === 0) return '<p class="muted">No clean reference known (pass --reference to blindspot report): no PSNR / SSIM.</p>';
  const rows = data.quality
    .map((q) => `<tr><td>${escapeHtml(q.name)}</td><td>${formatNumber(q.range)}</td><td>${formatNumber(q.psnrNoisy)}</td><td>${formatNumber(q.psnrDenoised)}</td><td>${formatNumber(q.ssimNoisy)}</td><td>${formatNumber(q.ssimDenoised)}</td></tr>`)
    .join('');
  return `<table><tr><th>image</th><th>data range</th><th>PSNR noisy (dB)</th><th>PSNR denoised (dB)</th><th>SSIM noisy</th><th>SSIM denoised</th></tr>${rows}</table>`;
}

function trainingSection(data: ReportData): string {
  const t = data.training;
  if (!t) return '<p class="muted">No model folder known: no training curves.</p>';
  const changes = t.annealed
    ? `cosine annealing, ${formatNumber(t.annealed.from)} to ${formatNumber(t.annealed.to)}`
    : t.learningRateChanges.map((c) => `step ${formatNumber(c.step)}: ${formatNumber(c.from)} to ${formatNumber(c.to)}`).join('; ') || 'none';
  return `<table>
<tr><th>steps done / planned</th><td>${formatNumber(t.stepsDone)} / ${formatNumber(t.steps)}</td><th>best validation loss${t.validationLoss ? ` (${t.validationLoss})` : ''}</th><td id="best-val">${formatNumber(t.bestValLoss)} at step ${formatNumber(t.bestStep)}</td></tr>
<tr><th>training time</th><td>${formatNumber(t.wallSeconds)} s</td><th>learning-rate changes</th><td>${changes}</td></tr></table>
<div class="plots"><div class="plot" id="plot-loss-step"></div><div class="plot" id="plot-loss-time"></div></div>`;
}

function noiseSection(data: ReportData): string {
  if (data.noise.length === 0) return '<p class="muted">No noise-level fit recorded.</p>';
  const rows = data.noise
    .map((n) => `<tr><td>${escapeHtml(n.name)}</td><td>${n.source}</td><td>${formatNumber(n.sigma)}</td><td>${formatNumber(n.medianIntensity)}</td><td>${formatNumber(n.a)}</td><td>${formatNumber(n.b)}</td><td>${n.bins.length}</td></tr>`)
    .join('');
  return `<p class="muted">Noise variance against intensity (input units): binned variances of the residuals (points), the fitted noise-level function (line) and its Poisson-Gaussian summary var = a x + b (dashed).</p>
<table><tr><th>image</th><th>role</th><th>sigma at median</th><th>median intensity</th><th>a</th><th>b</th><th>bins</th></tr>${rows}</table>
<div class="plots" id="noise-plots"></div>`;
}

function streamSection(stream: StreamSection | undefined): string {
  if (!stream) return '<p class="muted">Not a streamed run (image files were denoised in memory): no per-chunk history.</p>';
  if (stream.histories.length === 0) return `<p class="note">The output ${escapeHtml(stream.output)} holds no run history.</p>`;
  const rows = stream.histories
    .map((h) => {
      const segs = h.segments;
      const last = segs.at(-1)!;
      const done = last.chunksSkipped + last.chunksWritten;
      const seconds = segs.reduce((s, g) => s + g.seconds, 0);
      const peak = Math.max(...segs.map((g) => g.peakRssBytes));
      const pct = h.chunksTotal > 0 ? (100 * done) / h.chunksTotal : 0;
      return `<tr><td>${h.shard ? `${h.shard.index} of ${h.shard.count}` : 'whole run'}</td><td><span class="bar"><i style="width:${pct.toFixed(1)}%"></i></span> ${formatNumber(done)} / ${formatNumber(h.chunksTotal)}</td><td>${segs.length}</td><td>${formatNumber(seconds)} s</td><td>${formatNumber(last.fetchesPerChunk)}</td><td>${bytes(peak)}</td><td>${bytes(last.maxMemoryBytes)}</td><td>${escapeHtml(last.machine.hostname)}, ${last.backend ?? ''}</td></tr>`;
    })
    .join('');
  return `<p>Input <code>${escapeHtml(stream.input)}</code> to <code>${escapeHtml(stream.output)}</code>, shape [${stream.shape.join(', ')}], chunks [${stream.chunks.join(', ')}]; ${stream.histories.length} of ${stream.shardCount} shard record(s).</p>
<table id="stream-shards"><tr><th>shard</th><th>blocks done</th><th>segments (runs, resumes)</th><th>time</th><th>input fetches per chunk</th><th>peak RSS</th><th>--max-memory</th><th>machine, backend</th></tr>${rows}</table>
<div class="plots"><div class="plot" id="plot-throughput"></div><div class="plot" id="plot-eta"></div><div class="plot" id="plot-fetches"></div><div class="plot" id="plot-memory"></div></div>`;
}

function provenanceSection(data: ReportData): string {
  const p = data.provenance;
  const m = p.machine;
  const cmds = p.commands.map((c) => `<tr><th>${escapeHtml(c.what)} command</th><td><code>${escapeHtml(c.argv.join(' '))}</code></td></tr>`).join('');
  return `<table>${cmds}
${p.model ? `<tr><th>model</th><td>${escapeHtml(p.model.method)} (${escapeHtml(p.model.network)})${p.model.folder ? `, folder <code>${escapeHtml(p.model.folder)}</code>` : ''}</td></tr><tr><th>model sha256</th><td><code id="model-sha">${escapeHtml(p.model.sha256 ?? 'not recorded')}</code></td></tr><tr><th>trained on</th><td>${escapeHtml(p.model.backend ?? '?')}, ${p.model.threads ?? '?'} thread(s)</td></tr>` : ''}
<tr><th>denoise engine / backend</th><td>${escapeHtml(p.backend ?? 'not recorded')}</td></tr>
<tr><th>versions</th><td>blindspot ${escapeHtml(p.versions.blindspot)}, Node ${escapeHtml(p.versions.node)}${p.versions.tfjs ? `, TensorFlow.js ${escapeHtml(p.versions.tfjs)}` : ''}</td></tr>
${m ? `<tr><th>machine</th><td>${escapeHtml(m.hostname)}: ${m.cpus} x ${escapeHtml(m.cpuModel)}, ${bytes(m.totalMemoryBytes)}, ${escapeHtml(m.platform)}</td></tr>` : ''}
<tr><th>report generated</th><td>${escapeHtml(p.generated)}</td></tr></table>`;
}

/** JSON inside a <script> element: '</' and the JS line separators escaped. */
function scriptJson(value: unknown): string {
  return JSON.stringify(value).replace(/<\//g, '<\\/').replace(/\u2028/g, '\\u2028').replace(/\u2029/g, '\\u2029');
}

const SECTIONS = [
  ['tiles', 'Before / after'],
  ['quality', 'PSNR / SSIM'],
  ['training', 'Training'],
  ['noise', 'Noise level'],
  ['stream', 'Streamed run'],
  ['provenance', 'Provenance'],
] as const;

export function renderReportHtml(data: ReportData): string {
  const { script, style } = uPlotAssets();
  const bodies: Record<(typeof SECTIONS)[number][0], string> = {
    tiles: tilesSection(data.tiles),
    quality: qualitySection(data),
    training: trainingSection(data),
    noise: noiseSection(data),
    stream: streamSection(data.stream),
    provenance: provenanceSection(data),
  };
  const notes = data.notes.length > 0 ? `<section id="notes"><h2>Notes</h2><ul>${data.notes.map((n) => `<li class="note">${escapeHtml(n)}</li>`).join('')}</ul></section>` : '';
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<meta name="generator" content="${REPORT_GENERATOR}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escapeHtml(data.title)}</title>
<style>${style}</style><style>${STYLE}</style></head>
<body>
<header><h1>${escapeHtml(data.title)}</h1><p>${escapeHtml(data.subject)}</p></header>
<nav>${SECTIONS.map(([id, title]) => `<a href="#${id}">${title}</a>`).join('')}</nav>
${SECTIONS.map(([id, title]) => `<section id="${id}"><h2>${title}</h2>\n${bodies[id]}\n</section>`).join('\n')}
${notes}
<script type="application/json" id="report-data">${scriptJson(data)}</script>
<script>${script}</script>
<script>${CLIENT_SCRIPT}</script>
</body></html>
`;
}
