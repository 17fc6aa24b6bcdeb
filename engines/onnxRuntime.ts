/**
 * The ONNX Runtime engine (onnxruntime-node): one InferenceSession per model, on the CPU or on an
 * NVIDIA GPU through the CUDA or TensorRT execution provider.
 *
 * The CPU provider and the N-API binding come inside the npm package; the CUDA / TensorRT
 * provider libraries (libonnxruntime_providers_{shared,cuda,tensorrt}.so) are downloaded by the
 * package's postinstall, which this project skips (docs/onnx-engine.md has the command that
 * installs them). A provider that was asked for and cannot be appended to the session is an
 * EngineUnavailableError; only `--device auto` falls back to the CPU, and says so in its log line.
 */
import { existsSync, readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import type * as Ort from 'onnxruntime-node';
import { assertSameShape, type DeviceChoice, type DeviceName, EngineUnavailableError, type InferenceEngine } from './engine.js';
import { type OrtRunner, WorkerRunner } from './onnxWorkerSession.js';

const ORT = 'onnxruntime-node';

type OrtModule = typeof Ort;

let loaded: Promise<OrtModule> | null = null;

/** Loads onnxruntime-node once (its native binding); rejects with the reason when it cannot. */
export function loadOnnxRuntime(): Promise<OrtModule> {
  loaded ??= import(ORT).then((m: OrtModule & { default?: OrtModule }) => {
    const ort = (m.InferenceSession ? m : m.default) as OrtModule;
    // The binding loads lazily: list the backends now so a broken native install fails here.
    ort.listSupportedBackends();
    return ort;
  });
  return loaded;
}

/** The folder of the native binding, where the GPU provider libraries must lie. */
export function onnxRuntimeBinFolder(): string {
  const main = createRequire(import.meta.url).resolve(ORT);
  return path.join(path.dirname(main), '..', 'bin', 'napi-v6', process.platform, process.arch);
}

const PROVIDER_LIBRARIES: Record<Exclude<DeviceName, 'cpu'>, string[]> = {
  cuda: ['libonnxruntime_providers_shared.so', 'libonnxruntime_providers_cuda.so'],
  tensorrt: ['libonnxruntime_providers_shared.so', 'libonnxruntime_providers_cuda.so', 'libonnxruntime_providers_tensorrt.so'],
};

/** The provider libraries `device` needs that are not installed (empty when all are there). */
export function missingProviderLibraries(device: Exclude<DeviceName, 'cpu'>): string[] {
  const folder = onnxRuntimeBinFolder();
  return PROVIDER_LIBRARIES[device].filter((lib) => !existsSync(path.join(folder, lib)));
}

/** Whether an NVIDIA GPU is visible to this process (its device nodes, as the container runtime maps them). */
export function nvidiaGpuPresent(): boolean {
  try {
    return readdirSync('/dev').some((name) => /^nvidia\d+$/.test(name));
  } catch {
    return false;
  }
}

export interface OnnxEngineOptions {
  /** The ONNX model (NHWC / NDHWC float32 one channel in and out, normalised units). */
  model: Uint8Array;
  /** The graph output to fetch (default: the graph's only output). */
  outputName?: string;
  device?: DeviceChoice;
  /** Intra-op threads (default: all cores). Fixed per run: see docs/onnx-engine.md, determinism. */
  threads?: number;
  /**
   * Runs the session in its own worker thread (default true): `session.run` blocks the thread that
   * calls it, so in the main thread nothing else (reading, decoding, writing) runs meanwhile. False
   * keeps it in this thread (the tests compare the two byte for byte).
   */
  inWorker?: boolean;
}

function providerList(device: DeviceName): Ort.InferenceSession.ExecutionProviderConfig[] {
  // ORT places nodes a GPU provider cannot run on the CPU provider, which it always appends.
  if (device === 'cuda') return [{ name: 'cuda', deviceId: 0 }];
  if (device === 'tensorrt') return [{ name: 'tensorrt', deviceId: 0 }, { name: 'cuda', deviceId: 0 }];
  return ['cpu'];
}

export async function createSession(ort: OrtModule, model: Uint8Array, device: DeviceName, threads: number): Promise<Ort.InferenceSession> {
  return ort.InferenceSession.create(model, {
    executionProviders: providerList(device),
    graphOptimizationLevel: 'all',
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
    executionMode: 'sequential',
    // Errors only: a GPU session warns about every node it leaves on the CPU.
    logSeverityLevel: 3,
  });
}

/** The session as a runner in this thread. */
function inThreadRunner(ort: OrtModule, session: Ort.InferenceSession): OrtRunner {
  return {
    inputNames: session.inputNames,
    outputNames: session.outputNames,
    async run(batch, shape, outputName) {
      const feeds = { [session.inputNames[0]]: new ort.Tensor('float32', batch, [...shape]) };
      const out = (await session.run(feeds, [outputName]))[outputName] as Ort.Tensor;
      return { data: out.data as Float32Array, dims: out.dims };
    },
    release: () => session.release(),
  };
}

async function openRunner(ort: OrtModule, model: Uint8Array, device: DeviceName, threads: number, inWorker: boolean): Promise<OrtRunner> {
  if (inWorker) return WorkerRunner.open({ model, device, threads });
  return inThreadRunner(ort, await createSession(ort, model, device, threads));
}

/**
 * Opens an ONNX Runtime session for `model` on the requested device. 'auto' takes CUDA where its
 * provider libraries are installed and a GPU is present and the session opens there, else the CPU.
 */
export async function openOnnxEngine(opts: OnnxEngineOptions): Promise<InferenceEngine> {
  const requested = opts.device ?? 'auto';
  const threads = opts.threads ?? os.availableParallelism();
  let ort: OrtModule;
  try {
    ort = await loadOnnxRuntime();
  } catch (err) {
    throw new EngineUnavailableError('engine onnx', `${ORT} does not load here (${(err as Error).message})`, { cause: err });
  }
  let device: DeviceName;
  const inWorker = opts.inWorker ?? true;
  let session: OrtRunner;
  let note = '';
  if (requested === 'auto') {
    const missing = missingProviderLibraries('cuda');
    if (missing.length > 0) note = 'cuda: provider libraries not installed';
    else if (!nvidiaGpuPresent()) note = 'cuda: no NVIDIA GPU visible';
    session = await (note ? Promise.reject(new Error(note)) : openRunner(ort, opts.model, 'cuda', threads, inWorker)).then(
      (s) => {
        device = 'cuda';
        return s;
      },
      async (err: Error) => {
        note ||= `cuda did not start (${firstLine(err.message)})`;
        device = 'cpu';
        return openRunner(ort, opts.model, 'cpu', threads, inWorker);
      },
    );
  } else {
    device = requested;
    if (device !== 'cpu') {
      const missing = missingProviderLibraries(device);
      if (missing.length > 0) {
        throw new EngineUnavailableError(
          `device ${device}`,
          `ONNX Runtime's ${device} provider is not installed (${missing.join(', ')} missing in ${onnxRuntimeBinFolder()}); ` +
            `install it with 'npm run gpu:install' (needs CUDA 12.x and cuDNN 9.x${device === 'tensorrt' ? ', TensorRT 10.x' : ''}), or use --device cpu`,
        );
      }
      if (!nvidiaGpuPresent()) throw new EngineUnavailableError(`device ${device}`, 'no NVIDIA GPU is visible to this process (no /dev/nvidia*); use --device cpu');
    }
    try {
      session = await openRunner(ort, opts.model, device, threads, inWorker);
    } catch (err) {
      throw new EngineUnavailableError(`device ${device}`, `ONNX Runtime could not start its ${device} provider: ${firstLine((err as Error).message)}`, { cause: err });
    }
  }
  const outputName = opts.outputName ?? (session.outputNames.length === 1 ? session.outputNames[0] : undefined);
  if (session.inputNames.length !== 1 || outputName === undefined || !session.outputNames.includes(outputName)) {
    await session.release();
    throw new Error(
      `the ONNX model has inputs [${session.inputNames.join(', ')}] and outputs [${session.outputNames.join(', ')}]; one input and ${opts.outputName ? `an output '${opts.outputName}'` : 'one output'} are expected`,
    );
  }
  const provider = device!;
  return {
    name: 'onnx',
    provider,
    threads,
    describe: () => `engine onnx (onnxruntime-node ${ort.env.versions.node ?? '?'}, provider ${provider}, ${threads} intra-op thread(s))${note ? `; ${note}` : ''}${inWorker ? '; session in a worker thread' : ''}`,
    async predict(batch, shape) {
      const out = await session.run(batch, shape, outputName);
      assertSameShape('onnx engine', shape, out.dims, out.data.length);
      return out.data;
    },
    async dispose() {
      await session.release();
    },
  };
}

function firstLine(text: string): string {
  return text.split('\n')[0].slice(0, 300);
}
