/**
 * The engine for a trained model folder and the output `denoise` writes: what the pipelines call,
 * naming no engine. The tfjs side is the folder's network (with a prior network's posterior); the
 * ONNX side is the folder's ONNX graph (models/onnx), which ends with the same output.
 */
import type { LayersModel } from '@tensorflow/tfjs-layers';
import { type DenoiseOutput, denoisingTileModel } from '../methods/denoiser.js';
import type { SamplingOptions } from '../methods/method.js';
import type { ModelManifest } from '../models/io.js';
import { onnxForModelFolder } from '../models/onnx/export.js';
import { normalisedNoise } from '../models/onnx/posterior.js';
import type { InferenceEngine } from './engine.js';
import { type EngineRequest, openEngine } from './select.js';

export type { EngineRequest } from './select.js';

export interface ModelFolderNetwork {
  modelDir: string;
  model: LayersModel;
  manifest: ModelManifest;
  output: DenoiseOutput;
  /** Sampling methods (DivNoising): how many samples and their seed. */
  sampling?: SamplingOptions;
}

/** Opens the engine `request` asks for on the network of a model folder (see engines/select.ts). */
export function openModelEngine(request: EngineRequest, network: ModelFolderNetwork): Promise<InferenceEngine> {
  const { modelDir, model, manifest, output, sampling } = network;
  const role = output === 'uncertainty' ? 'uncertainty' : output === 'prior-mean' ? 'prior-mean' : 'denoised';
  return openEngine(request, {
    tfjs: denoisingTileModel(model, manifest, output, sampling),
    onnx: async () => {
      // A prior whose noise the graph cannot express is exported as the prior mean: not what tfjs gives.
      if (manifest.prior && normalisedNoise(manifest.prior.noise, manifest.normalisation) === null) {
        throw new Error(`the ONNX graph of ${modelDir} cannot hold the posterior of its noise model; it runs on --engine tfjs`);
      }
      // A sampled output (one DivNoising sample) has no graph either: exportOnnx refuses those models.
      if (output === 'sample') throw new Error(`posterior samples of ${modelDir} are drawn on --engine tfjs`);
      const { bytes, info } = await onnxForModelFolder(modelDir);
      const tensor = info.outputs.find((o) => o.role === role);
      if (!tensor) throw new Error(`the ONNX graph of ${modelDir} has no '${role}' output (it has ${info.outputs.map((o) => o.role).join(', ')})`);
      return { bytes, outputName: tensor.name };
    },
  });
}

/** The engine line of a run's log and JSON events. */
export function engineEvent(engine: InferenceEngine): { type: 'engine'; engine: string; provider: string; threads: number; detail: string } {
  return { type: 'engine', engine: engine.name, provider: engine.provider, threads: engine.threads, detail: engine.describe() };
}
