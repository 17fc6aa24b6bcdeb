/**
 * Progress for people and for machines: a one-line bar redrawn in place on a terminal, JSON lines
 * (one object per event, with a timestamp) when output is not a terminal or with --json.
 */
import type { TrainEvent } from '../pipeline/train.js';
import type { DenoiseEvent } from '../pipeline/denoise.js';
import { describeNetwork } from '../models/network.js';
import { classicalComparisonLines } from '../pipeline/classicalComparison.js';

export interface Reporter {
  readonly json: boolean;
  /** A structured event: printed as a JSON line, or fed to the bar. */
  event(kind: string, fields: Record<string, unknown>): void;
  /** A human message (stderr on a terminal; a {"type":"log"} line in JSON mode). */
  log(message: string): void;
  train(e: TrainEvent): void;
  denoise(e: DenoiseEvent): void;
  /** Ends an in-place bar line. */
  finish(): void;
}

export function createReporter(opts: { json: boolean; out?: NodeJS.WriteStream; err?: NodeJS.WriteStream }): Reporter {
  const out = opts.out ?? process.stdout;
  const err = opts.err ?? process.stderr;
  const json = opts.json;
  let barOpen = false;
  let lastDraw = 0;

  const emitJson = (kind: string, fields: Record<string, unknown>): void => {
    out.write(JSON.stringify({ time: new Date().toISOString(), ...fields, type: kind }) + '\n');
  };
  const draw = (line: string, force = false): void => {
    const now = Date.now();
    if (!force && now - lastDraw < 100) return;
    lastDraw = now;
    const width = err.columns ?? 100;
    err.write('\r' + line.slice(0, width - 1).padEnd(Math.min(width - 1, line.length + 4)));
    barOpen = true;
  };
  const endBar = (): void => {
    if (barOpen) err.write('\n');
    barOpen = false;
  };
  const say = (message: string): void => {
    endBar();
    err.write(message + '\n');
  };

  return {
    json,
    event(kind, fields) {
      if (json) emitJson(kind, fields);
    },
    log(message) {
      if (json) emitJson('log', { message });
      else say(message);
    },
    train(e) {
      if (json) {
        emitJson(e.type, { ...e });
        return;
      }
      switch (e.type) {
        case 'start':
          say(
            `${e.resumed ? 'resuming' : 'training'} ${e.method}, ${e.network}: ${e.trainVolumes} training / ${e.valVolumes} validation image(s), ` +
              `patch ${e.patchShape.join('x')}, batch ${e.batchSize}, ` +
              (e.budgetSeconds === undefined
                ? `steps ${e.firstStep}..${e.steps}`
                : `budget ${formatSeconds(e.budgetSeconds)}${Number.isSafeInteger(e.steps + 1) ? ` or ${e.steps} steps` : ''}, from step ${e.firstStep}`) +
              `; ${e.trainEngine}`,
          );
          break;
        case 'step': {
          // With a time budget the run ends at whichever comes first: the budget or the step cap.
          const stepEta = e.stepsPerSecond > 0 ? (e.steps - e.step) / e.stepsPerSecond : NaN;
          const eta = e.budgetSeconds === undefined ? stepEta : Math.min(Math.max(0, e.budgetSeconds - e.seconds), Number.isNaN(stepEta) ? Infinity : stepEta);
          const done = Math.max(e.step / e.steps, e.budgetSeconds === undefined ? 0 : e.seconds / e.budgetSeconds);
          const capped = Number.isSafeInteger(e.steps + 1);
          draw(
            `train ${bar(Math.min(1, done))} ${e.step}${capped ? `/${e.steps}` : ''} ${e.stepsPerSecond.toFixed(2)} step/s ` +
              `loss ${e.loss.toFixed(4)} val ${e.lastValLoss === null ? '-' : e.lastValLoss.toFixed(4)} lr ${e.learningRate.toExponential(1)} ETA ${formatSeconds(eta)}`,
            e.step === e.steps,
          );
          break;
        }
        case 'validation':
          if (e.best) lastDraw = 0;
          break;
        case 'interrupted':
          say(`interrupted at step ${e.step}: checkpoint written`);
          break;
        case 'time-budget-spent':
          say(`time budget of ${formatSeconds(e.budgetSeconds)} spent at step ${e.step} (${formatSeconds(e.seconds)}): the best validated model is kept`);
          break;
        case 'warning':
          say(`warning: ${e.message}`);
          break;
        case 'classical-comparison':
          for (const line of classicalComparisonLines(e)) say(line);
          break;
        case 'done':
          say(`done: ${e.steps} steps in ${formatSeconds(e.seconds)}, best validation loss ${e.bestValLoss?.toFixed(5) ?? '-'} at step ${e.bestStep}`);
          break;
        default:
          break;
      }
    },
    denoise(e) {
      if (json) {
        emitJson(
          e.type,
          e.type === 'model'
            ? { method: e.manifest.method, dims: e.manifest.network.dims, stepsDone: e.manifest.training.stepsDone, finished: e.manifest.training.finished }
            : { ...e },
        );
        return;
      }
      switch (e.type) {
        case 'model': {
          const t = e.manifest.training;
          say(`model: ${e.manifest.method}, ${describeNetwork(e.manifest.network)}, trained ${t.stepsDone} steps (best at ${t.bestStep})`);
          if (!t.finished) say(`warning: this model comes from an unfinished run (step ${t.stepsDone} of ${t.steps}); resume its training with --resume`);
          break;
        }
        case 'engine':
          say(e.detail);
          break;
        case 'image-start':
          draw(`denoise [${e.index + 1}/${e.count}] ${e.file} (${e.shape.join('x')})`, true);
          break;
        case 'tiles':
          draw(`denoise ${e.file} tiles ${bar(e.done / e.total)} ${e.done}/${e.total}`);
          break;
        case 'image-done':
          say(`wrote ${e.output} (${e.seconds.toFixed(1)} s, ${e.megapixelsPerSecond.toFixed(3)} Mpx/s)`);
          break;
        default:
          break;
      }
    },
    finish: endBar,
  };
}

function bar(fraction: number, width = 24): string {
  const f = Math.max(0, Math.min(1, fraction));
  const full = Math.round(f * width);
  return '[' + '#'.repeat(full) + '-'.repeat(width - full) + '] ' + (f * 100).toFixed(0).padStart(3) + '%';
}

export function formatSeconds(s: number): string {
  if (!Number.isFinite(s)) return '--';
  if (s < 60) return `${s.toFixed(0)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(Math.round(s % 60)).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.round((s % 3600) / 60)).padStart(2, '0')}m`;
}
