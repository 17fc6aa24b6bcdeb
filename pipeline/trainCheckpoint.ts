/**
 * Checkpoints of a training run: the model, the optimiser's moments and the loop's state, written into
 * <out>/checkpoint at every validation (and on an interrupt) and read back by --resume; and what an
 * existing --out holds (nothing, an interrupted run, a finished model, something else).
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import type * as tfl from '@tensorflow/tfjs-layers';
import { InputError, OutputError } from '../core/errors.js';
import { MANIFEST_JSON, modelFromFiles, modelToFiles, writeFilesAtomically, MODEL_JSON, WEIGHTS_BIN, type TrainingRecord } from '../models/io.js';
import { describeFsError } from '../storage/location.js';

/** The checkpoint folder inside the model folder; removed when the run finishes. */
export const CHECKPOINT_DIR = 'checkpoint';

export interface CheckpointState {
  stepsDone: number;
  learningRate: number;
  bestValLoss: number | null;
  bestStep: number;
  plateauWait: number;
  history: TrainingRecord[];
  wallSeconds: number;
  optimizerWeights: tf.io.WeightsManifestEntry[];
  /** Learned prior: log sigma (normalised units). */
  learnedLogSigma?: number;
  bestLearnedLogSigma?: number;
}

export type OutputState = 'absent' | 'checkpoint' | 'finished' | 'other';

/** What --out holds: nothing, an interrupted run (its checkpoint), a finished model, or something else. */
export async function inspectOutput(out: string): Promise<OutputState> {
  let entries: string[];
  try {
    entries = await fs.readdir(out);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 'absent';
    throw new OutputError(out, `cannot be used as the model folder: ${describeFsError(err)}`, { cause: err });
  }
  if (entries.includes(CHECKPOINT_DIR)) return 'checkpoint';
  if (entries.includes(MANIFEST_JSON)) return 'finished';
  if (entries.length === 0) return 'absent';
  return 'other';
}

export async function writeCheckpoint(dir: string, model: tfl.LayersModel, optimizer: tf.Optimizer, state: CheckpointState): Promise<void> {
  const { modelJson, weights } = await modelToFiles(model);
  const named = await optimizer.getWeights();
  const encoded = await tf.io.encodeWeights(named);
  const optimizerData = new Uint8Array(tf.io.CompositeArrayBuffer.join(encoded.data));
  const fullState: CheckpointState = { ...state, optimizerWeights: encoded.specs };
  // state.json last: a checkpoint is only as new as its state file says, and every file is renamed into place.
  await writeFilesAtomically(dir, { [MODEL_JSON]: modelJson, [WEIGHTS_BIN]: weights, 'optimizer.bin': optimizerData });
  await writeFilesAtomically(dir, { 'state.json': JSON.stringify(fullState) });
}

export async function readCheckpoint(dir: string, optimizer: tf.Optimizer, fresh: CheckpointState): Promise<{ model: tfl.LayersModel; state: CheckpointState }> {
  const stateFile = path.join(dir, 'state.json');
  let state: CheckpointState;
  try {
    state = { ...fresh, ...(JSON.parse(await fs.readFile(stateFile, 'utf8')) as CheckpointState) };
  } catch (err) {
    throw new InputError(stateFile, `cannot read the checkpoint (${(err as Error).message}); start a new run in another --out`);
  }
  const model = await modelFromFiles(
    await fs.readFile(path.join(dir, MODEL_JSON), 'utf8'),
    new Uint8Array(await fs.readFile(path.join(dir, WEIGHTS_BIN))),
    path.join(dir, MODEL_JSON),
  );
  const optimizerBytes = await fs.readFile(path.join(dir, 'optimizer.bin'));
  const buffer = optimizerBytes.buffer.slice(optimizerBytes.byteOffset, optimizerBytes.byteOffset + optimizerBytes.byteLength) as ArrayBuffer;
  const decoded = tf.io.decodeWeights(buffer, state.optimizerWeights);
  await optimizer.setWeights(state.optimizerWeights.map((s) => ({ name: s.name, tensor: decoded[s.name] })));
  return { model, state };
}
