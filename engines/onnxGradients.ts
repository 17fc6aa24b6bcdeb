/**
 * Training's arithmetic on ONNX Runtime's CPU kernels: the network's loss-and-gradients graph
 * (models/onnx/trainingGraph.ts) in one session, fed the batch and the current weights each step.
 * tfjs keeps the weights, Adam and the checkpoints, so a run can resume on either engine.
 * Measured against tfjs wasm on the same step: bench:speed (docs/engines.md).
 */
import os from 'node:os';
import type * as Ort from 'onnxruntime-node';
import type * as tfl from '@tensorflow/tfjs-layers';
import { buildForwardGraph, buildTrainingGraph, buildVjpGraph, type TrainingGraph, type TrainingGraphLoss } from '../models/onnx/trainingGraph.js';
import { VaeSample } from '../models/vae.js';
import { EngineUnavailableError, type GradientEngine } from './engine.js';
import { createSession, loadOnnxRuntime } from './onnxRuntime.js';

export interface OnnxGradientOptions {
  /**
   * The masked loss the gradients graph computes, or 'outside': the loss is computed from the
   * network's output elsewhere and its gradient comes back through `vjp` (no `gradients`).
   */
  loss: TrainingGraphLoss | 'outside';
  /** Intra-op threads (default: all cores). */
  threads?: number;
}

/**
 * Opens the gradient engine for `model`. Throws UnsupportedLayerError (a layer the graph's backward
 * pass does not cover) or EngineUnavailableError (onnxruntime-node does not load).
 */
export async function openOnnxGradientEngine(model: tfl.LayersModel, opts: OnnxGradientOptions): Promise<GradientEngine> {
  // Built first: a layer or loss the graph does not cover throws before anything loads.
  const graph = opts.loss === 'outside' ? buildVjpGraph(model) : buildTrainingGraph(model, opts.loss);
  let ort: typeof Ort;
  try {
    ort = await loadOnnxRuntime();
  } catch (err) {
    throw new EngineUnavailableError('train engine onnx', `onnxruntime-node does not load here (${(err as Error).message})`, { cause: err });
  }
  const threads = opts.threads ?? os.availableParallelism();
  const session = await createSession(ort, graph.bytes, 'cpu', threads);
  // Only losses that read the network's output first need the forward graph: opened on first use.
  let forward: { graph: TrainingGraph; session: Ort.InferenceSession } | undefined;
  const shapes = model.trainableWeights.map((w) => w.shape.map((d) => d ?? 0));
  const stateShapes = model.nonTrainableWeights.map((w) => w.shape.map((d) => d ?? 0));
  const weightFeeds = (g: TrainingGraph, weights: readonly Float32Array[], state: readonly Float32Array[]): Record<string, Ort.Tensor> => {
    if (weights.length !== shapes.length || state.length !== stateShapes.length) {
      throw new Error(`onnx gradients: ${weights.length} weights and ${state.length} state arrays given, the network has ${shapes.length} and ${stateShapes.length}`);
    }
    const feeds: Record<string, Ort.Tensor> = {};
    g.weightInputs.forEach((name, i) => (feeds[name] = new ort.Tensor('float32', weights[i], shapes[i])));
    g.stateInputs.forEach((name, j) => (feeds[name] = new ort.Tensor('float32', state[j], stateShapes[j])));
    return feeds;
  };
  /** A graph's noise inputs for a batch of `shape`: given (the forward pass's, for its backward pass), or drawn by their layers now. */
  const noiseFeeds = (g: TrainingGraph, feeds: Record<string, Ort.Tensor>, shape: readonly number[], given?: readonly Float32Array[]): Float32Array[] => {
    if (given !== undefined && given.length !== g.noiseInputs.length) throw new Error(`onnx gradients: ${given.length} noise arrays given, the network draws ${g.noiseInputs.length}`);
    return g.noiseInputs.map((n, k) => {
      const dims = [shape[0], ...shape.slice(1, -1).map((d) => d / n.divisor), n.channels];
      let data = given?.[k];
      if (data === undefined) {
        const layer = model.getLayer(n.layer);
        if (!(layer instanceof VaeSample)) throw new Error(`onnx gradients: ${n.layer} takes noise but is not a sampling layer`);
        const eps = layer.nextNoise(dims);
        data = eps.dataSync() as Float32Array;
        eps.dispose();
      }
      feeds[n.name] = new ort.Tensor('float32', data, dims);
      return data;
    });
  };
  const fetches = [...(opts.loss === 'outside' ? [] : ['loss']), ...graph.gradientOutputs, ...graph.stateOutputs];
  const results = (out: Ort.InferenceSession.ReturnType) => ({
    gradients: graph.gradientOutputs.map((name) => out[name].data as Float32Array),
    state: graph.stateOutputs.map((name) => out[name].data as Float32Array),
  });
  return {
    describe: () => `train engine onnx (onnxruntime-node ${ort.env.versions.node ?? '?'}, provider cpu, ${threads} intra-op thread(s))`,
    async gradients(batch, weights, state) {
      if (opts.loss === 'outside') throw new Error('onnx gradients: this engine computes the gradients of a loss given on the output (vjp), not a masked loss');
      const dims = [...batch.shape];
      const feeds = weightFeeds(graph, weights, state);
      feeds['input'] = new ort.Tensor('float32', batch.inputs, dims);
      feeds['target'] = new ort.Tensor('float32', batch.targets, dims);
      feeds['mask'] = new ort.Tensor('float32', batch.masks, dims);
      noiseFeeds(graph, feeds, dims);
      const out = await session.run(feeds, fetches);
      return { loss: (out['loss'].data as Float32Array)[0], ...results(out) };
    },
    async vjp(inputs, shape, dPrediction, weights, state, noise) {
      if (opts.loss !== 'outside') throw new Error('onnx gradients: this engine computes a masked loss; open it with loss "outside" for vjp');
      if (graph.noiseInputs.length > 0 && noise === undefined) throw new Error('onnx gradients: a sampling network\'s backward pass needs the forward pass\'s noise');
      const feeds = weightFeeds(graph, weights, state);
      noiseFeeds(graph, feeds, shape, noise);
      feeds['input'] = new ort.Tensor('float32', inputs, [...shape]);
      feeds['dprediction'] = new ort.Tensor('float32', dPrediction, [...shape.slice(0, -1), dPrediction.length / shape.slice(0, -1).reduce((a, b) => a * b, 1)]);
      return results(await session.run(feeds, fetches));
    },
    async forward(inputs, shape, weights, state) {
      if (!forward) {
        const forwardGraph = buildForwardGraph(model);
        forward = { graph: forwardGraph, session: await createSession(ort, forwardGraph.bytes, 'cpu', threads) };
      }
      const feeds = weightFeeds(forward.graph, weights, state);
      feeds['input'] = new ort.Tensor('float32', inputs, [...shape]);
      const noise = noiseFeeds(forward.graph, feeds, shape);
      const out = await forward.session.run(feeds, ['prediction', ...forward.graph.stateOutputs]);
      return { prediction: out['prediction'].data as Float32Array, state: forward.graph.stateOutputs.map((name) => out[name].data as Float32Array), noise };
    },
    async dispose() {
      await session.release();
      await forward?.session.release();
    },
  };
}
