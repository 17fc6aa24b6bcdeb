/** Figures for people: image montages and loss curves, as PNG (and the curve also as SVG). */
import { promises as fs } from 'node:fs';
import sharp from 'sharp';
import type { TrainingRecord } from '../models/io.js';

/** Side-by-side montage of equally sized 2D slices, each with a caption, windowed by one shared intensity range. */
export async function writeMontage(
  file: string,
  panels: Array<{ data: Float32Array; caption: string }>,
  shape: readonly [number, number],
  window: [low: number, high: number],
): Promise<void> {
  const [h, w] = shape;
  const gap = 8;
  const captionHeight = 24;
  const width = panels.length * w + (panels.length + 1) * gap;
  const height = h + captionHeight + 2 * gap;
  const canvas = Buffer.alloc(width * height, 255);
  const [lo, hi] = window;
  panels.forEach((panel, p) => {
    const x0 = gap + p * (w + gap);
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const v = (panel.data[y * w + x] - lo) / (hi - lo);
        canvas[(captionHeight + gap + y) * width + x0 + x] = Math.round(255 * Math.min(1, Math.max(0, v)));
      }
    }
  });
  const captions = panels
    .map((panel, p) => `<text x="${gap + p * (w + gap) + w / 2}" y="${captionHeight - 4}" font-family="sans-serif" font-size="14" text-anchor="middle">${escapeXml(panel.caption)}</text>`)
    .join('');
  const svg = Buffer.from(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}">${captions}</svg>`);
  await sharp(canvas, { raw: { width, height, channels: 1 } })
    .composite([{ input: svg, top: 0, left: 0 }])
    .png()
    .toFile(file);
}

/** Training and validation loss against step, as an SVG document. */
export function lossCurveSvg(history: TrainingRecord[], title: string): string {
  const width = 640;
  const height = 400;
  const m = { left: 70, right: 20, top: 36, bottom: 46 };
  const steps = history.map((h) => h.step);
  const losses = history.map((h) => h.loss).concat(history.filter((h) => h.valLoss !== undefined).map((h) => h.valLoss!));
  const xMax = Math.max(1, ...steps);
  const positive = losses.filter((l) => l > 0);
  const yMin = Math.log10(Math.min(...positive));
  const yMax = Math.log10(Math.max(...positive));
  const ySpan = Math.max(1e-6, yMax - yMin);
  const px = (s: number): number => m.left + ((width - m.left - m.right) * s) / xMax;
  const py = (l: number): number => m.top + ((height - m.top - m.bottom) * (yMax - Math.log10(Math.max(l, 1e-12)))) / ySpan;
  // Training loss is noisy per step: draw a running mean over a window so the trend reads.
  const window = Math.max(1, Math.round(history.length / 50));
  const smooth = history.map((_, i) => {
    const from = Math.max(0, i - window + 1);
    const slice = history.slice(from, i + 1);
    return slice.reduce((a, h) => a + h.loss, 0) / slice.length;
  });
  const trainPath = history.map((h, i) => `${i === 0 ? 'M' : 'L'}${px(h.step).toFixed(1)},${py(smooth[i]).toFixed(1)}`).join(' ');
  const val = history.filter((h) => h.valLoss !== undefined);
  const valPath = val.map((h, i) => `${i === 0 ? 'M' : 'L'}${px(h.step).toFixed(1)},${py(h.valLoss!).toFixed(1)}`).join(' ');
  const ticks = [0, 0.25, 0.5, 0.75, 1].map((f) => {
    const l = Math.pow(10, yMin + f * ySpan);
    return `<text x="${m.left - 6}" y="${py(l) + 4}" font-size="11" text-anchor="end">${l.toPrecision(3)}</text><line x1="${m.left}" x2="${width - m.right}" y1="${py(l)}" y2="${py(l)}" stroke="#ddd"/>`;
  });
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif">
<rect width="100%" height="100%" fill="white"/>
<text x="${width / 2}" y="22" font-size="15" text-anchor="middle">${escapeXml(title)}</text>
${ticks.join('\n')}
<line x1="${m.left}" y1="${height - m.bottom}" x2="${width - m.right}" y2="${height - m.bottom}" stroke="black"/>
<line x1="${m.left}" y1="${m.top}" x2="${m.left}" y2="${height - m.bottom}" stroke="black"/>
<text x="${width / 2}" y="${height - 10}" font-size="12" text-anchor="middle">step (max ${xMax})</text>
<text x="16" y="${height / 2}" font-size="12" text-anchor="middle" transform="rotate(-90 16 ${height / 2})">masked loss (log scale)</text>
<path d="${trainPath}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>
<path d="${valPath}" fill="none" stroke="#d62728" stroke-width="2"/>
<text x="${width - m.right - 150}" y="${m.top + 14}" font-size="12" fill="#1f77b4">training (running mean)</text>
<text x="${width - m.right - 150}" y="${m.top + 30}" font-size="12" fill="#d62728">validation</text>
</svg>
`;
}

export async function writeLossCurve(pngFile: string, history: TrainingRecord[], title: string): Promise<void> {
  const svg = lossCurveSvg(history, title);
  await fs.writeFile(pngFile.replace(/\.png$/, '.svg'), svg);
  await sharp(Buffer.from(svg)).png().toFile(pngFile);
}

function escapeXml(s: string): string {
  return s.replace(/[<>&"]/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;' })[c]!);
}
