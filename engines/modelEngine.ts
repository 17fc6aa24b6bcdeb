/**
 * The engine for a trained model folder and the output `denoise` writes: what the pipelines call,
 * naming no engine. The tfjs side is the folder's network (with a prior network's posterior); the
 * ONNX side is the folder's ONNX graph (models/onnx), which ends with the same output.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { LayersModel } from '@tensorflow/tfjs-layers';
import { type DenoiseOutput, denoisingTileModel } from '../models/bayes.js';
import type { ModelManifest } from '../models/io.js';
import type { InferenceEngine } from './engine.js';
import { type EngineRequest, openEngine } from './select.js';

export type { EngineRequest } from './select.js';

export interface ModelFolderNetwork {
  modelDir: string;
  model: LayersModel;
  manifest: ModelManifest;
  output: DenoiseOutput;
}

/** Opens the engine `request` asks for on the network of a model folder (see engines/select.ts). */
export function openModelEngine(request: EngineRequest, network: ModelFolderNetwork): Promise<InferenceEngine> {
  const { modelDir, model, manifest, output } = network;
  return openEngine(request, {
    tfjs: denoisingTileModel(model, manifest, output),
    onnx: async () => {
      if (manifest.prior && output !== 'denoised') {
        throw new Error(`the ONNX graph gives the posterior mean only; ${output === 'uncertainty' ? '--uncertainty' : '--prior-mean'} runs on --engine tfjs`);
      }
      return new Uint8Array(await fs.readFile(path.join(modelDir, 'model.onnx')));
    },
  });
}

/** The engine line of a run's log and JSON events. */
export function engineEvent(engine: InferenceEngine): { type: 'engine'; engine: string; provider: string; threads: number; detail: string } {
  return { type: 'engine', engine: engine.name, provider: engine.provider, threads: engine.threads, detail: engine.describe() };
}
