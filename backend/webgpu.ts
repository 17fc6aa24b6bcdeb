/**
 * The WebGPU backend (@tensorflow/tfjs-backend-webgpu) on Dawn, the WebGPU implementation the npm
 * package `webgpu` ships prebuilt (dawn.node; no download at install). Dawn drives NVIDIA and AMD
 * GPUs through Vulkan on Linux (Metal on macOS, D3D12 on Windows) with no CUDA version lock.
 *
 * Two kinds of adapter:
 * - hardware: Dawn's default backends at WebGPU's core feature level. 'auto' takes webgpu only
 *   for one of these.
 * - software: Mesa's llvmpipe through Dawn's OpenGL backend in WebGPU compatibility mode (Dawn
 *   rejects Debian 12's lavapipe Vulkan driver). Slow, but the same WGSL kernels run, so CPU-only
 *   CI exercises the GPU code path. Only an explicit `--backend webgpu` falls back to it.
 *
 * tfjs-backend-webgpu finds its adapter through `navigator.gpu.requestAdapter()` when it is
 * imported; Node has no navigator.gpu, so we install one that hands out the adapter chosen here
 * (tfjs would not ask for the compatibility feature level the OpenGL path needs).
 *
 * In Node, synchronous reads (dataSync, arraySync) throw on this backend (they go through an
 * OffscreenCanvas): everything on the training and prediction paths reads with `await data()`.
 */
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { registerWebgpuConv3dKernels } from './kernels/webgpuConv3d.js';
import { registerWebgpuRank5Kernels } from './kernels/webgpuRank5.js';

/** What the chosen adapter is, for the log and for sizing tensors. */
export interface WebgpuAdapterSummary {
  vendor: string;
  architecture: string;
  /** Device name (and, on the OpenGL path, the driver string). */
  device: string;
  description: string;
  /** A CPU implementation (llvmpipe, lavapipe, SwiftShader): never chosen by 'auto'. */
  software: boolean;
  /** 'default' (Vulkan / Metal / D3D12) or 'opengl' (compatibility mode). */
  dawnBackend: 'default' | 'opengl';
  /** Largest GPUBuffer, bytes. */
  maxBufferSize: number;
  /** Largest buffer one shader may bind as storage, bytes: the bound on a single tensor. */
  maxStorageBufferBindingSize: number;
}

/** Why no usable adapter was found (the caller turns it into its own error). */
export class WebgpuUnavailable extends Error {}

/** The minimal surface of the `webgpu` package (it ships its own types; we need only these). */
interface DawnModule {
  create(flags: string[]): DawnGpu;
  globals: Record<string, unknown>;
}
interface DawnGpu {
  requestAdapter(options?: Record<string, unknown>): Promise<DawnAdapter | null>;
}
interface DawnAdapter {
  info: { vendor: string; architecture: string; device: string; description: string; isFallbackAdapter?: boolean };
  limits: { maxBufferSize: number; maxStorageBufferBindingSize: number };
}

const WEBGPU_PACKAGE = 'webgpu';
const TFJS_WEBGPU_PACKAGE = '@tensorflow/tfjs-backend-webgpu';

/** Dawn instances stay referenced for the life of the process (collecting one loses its devices). */
const instances: DawnGpu[] = [];

export function webgpuPackageVersions(): { dawn: string | null; tfjs: string | null } {
  return { dawn: installedVersion(WEBGPU_PACKAGE), tfjs: installedVersion(TFJS_WEBGPU_PACKAGE) };
}

/**
 * Finds an adapter and activates tfjs's 'webgpu' backend on it. `allowSoftware`: fall back to
 * llvmpipe over OpenGL when there is no hardware adapter (explicit --backend webgpu).
 * Throws WebgpuUnavailable with the reason when none is found or the backend fails to start.
 */
export async function startWebgpuBackend(opts: { allowSoftware: boolean }): Promise<WebgpuAdapterSummary> {
  const versions = webgpuPackageVersions();
  if (versions.dawn === null) throw new WebgpuUnavailable(`the optional package '${WEBGPU_PACKAGE}' (Dawn) is not installed (\`npm install ${WEBGPU_PACKAGE}\`)`);
  if (versions.tfjs === null) throw new WebgpuUnavailable(`${TFJS_WEBGPU_PACKAGE} is not installed`);
  let dawn: DawnModule;
  try {
    dawn = (await import(WEBGPU_PACKAGE)) as unknown as DawnModule;
  } catch (error) {
    throw new WebgpuUnavailable(`${WEBGPU_PACKAGE}@${versions.dawn} failed to load: ${messageOf(error)}`);
  }
  const tried: string[] = [];
  let chosen: { adapter: DawnAdapter; summary: WebgpuAdapterSummary } | null = null;
  const hardware = await requestHardwareAdapter(dawn, tried);
  if (hardware !== null) chosen = hardware;
  else if (opts.allowSoftware) chosen = await requestOpenGlAdapter(dawn, tried);
  if (chosen === null) throw new WebgpuUnavailable(`Dawn found no ${opts.allowSoftware ? '' : 'hardware '}adapter (${tried.join('; ')})`);

  for (const [name, value] of Object.entries(dawn.globals)) {
    if (!(name in globalThis)) (globalThis as Record<string, unknown>)[name] = value;
  }
  const adapter = chosen.adapter;
  installNavigatorGpu({ requestAdapter: () => Promise.resolve(adapter) });
  try {
    await import(TFJS_WEBGPU_PACKAGE);
  } catch (error) {
    throw new WebgpuUnavailable(`${TFJS_WEBGPU_PACKAGE}@${versions.tfjs} failed to load: ${messageOf(error)}`);
  }
  if (tf.findBackendFactory('webgpu') === null) {
    throw new WebgpuUnavailable(`${TFJS_WEBGPU_PACKAGE}@${versions.tfjs} did not register its backend with @tensorflow/tfjs-core ${tf.version_core}`);
  }
  registerWebgpuRank5Kernels();
  registerWebgpuConv3dKernels();
  if (!(await tf.setBackend('webgpu'))) throw new WebgpuUnavailable(`${TFJS_WEBGPU_PACKAGE} failed to create a device on ${describeAdapter(chosen.summary)}`);
  return chosen.summary;
}

/** One short line: the adapter, the driver path and the buffer limits. */
export function describeAdapter(a: WebgpuAdapterSummary): string {
  const name = [a.vendor, a.architecture].filter((s) => s !== '').join(' ');
  const device = [name, a.device].filter((s) => s !== '').join(' / ') || 'unnamed adapter';
  const driver = a.description !== '' ? `, ${a.description}` : '';
  const mib = (bytes: number): string => `${Math.round(bytes / 2 ** 20)} MiB`;
  const kind = a.software ? 'software' : 'hardware';
  const path = a.dawnBackend === 'opengl' ? 'Dawn OpenGL, compatibility mode' : 'Dawn';
  return `${device}${driver} (${kind}, ${path}); maxBufferSize ${mib(a.maxBufferSize)}, maxStorageBufferBindingSize ${mib(a.maxStorageBufferBindingSize)}`;
}

async function requestHardwareAdapter(dawn: DawnModule, tried: string[]): Promise<{ adapter: DawnAdapter; summary: WebgpuAdapterSummary } | null> {
  // Without a Vulkan loader Dawn would only print a warning and find nothing: skip it quietly.
  if (process.platform === 'linux' && !hasVulkanLoader()) {
    tried.push('no Vulkan loader (libvulkan.so.1) for a hardware adapter');
    return null;
  }
  const gpu = dawn.create([]);
  instances.push(gpu);
  const adapter = await gpu.requestAdapter({ powerPreference: 'high-performance' });
  if (adapter === null) {
    tried.push('no adapter through Vulkan');
    return null;
  }
  const summary = summarise(adapter, 'default');
  if (summary.software) {
    tried.push(`only the software adapter ${summary.device || summary.description}`);
    return null;
  }
  return { adapter, summary };
}

async function requestOpenGlAdapter(dawn: DawnModule, tried: string[]): Promise<{ adapter: DawnAdapter; summary: WebgpuAdapterSummary } | null> {
  // Mesa's EGL needs no display server with the surfaceless platform; it warns without XDG_RUNTIME_DIR.
  process.env['EGL_PLATFORM'] ??= 'surfaceless';
  process.env['XDG_RUNTIME_DIR'] ??= mkdtempSync(path.join(os.tmpdir(), 'blindspot-xdg-'));
  const gpu = dawn.create(['backend=opengl']);
  instances.push(gpu);
  const adapter = await gpu.requestAdapter({ featureLevel: 'compatibility' });
  if (adapter === null) {
    tried.push('no OpenGL adapter (Mesa EGL: apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri)');
    return null;
  }
  return { adapter, summary: summarise(adapter, 'opengl') };
}

const SOFTWARE_DEVICES = /llvmpipe|lavapipe|softpipe|swiftshader|software rasterizer|microsoft basic render/i;

function summarise(adapter: DawnAdapter, dawnBackend: 'default' | 'opengl'): WebgpuAdapterSummary {
  const { vendor, architecture, device, description } = adapter.info;
  const software = adapter.info.isFallbackAdapter === true || SOFTWARE_DEVICES.test(`${vendor} ${architecture} ${device} ${description}`);
  return {
    vendor,
    architecture,
    device,
    description,
    software,
    dawnBackend,
    maxBufferSize: adapter.limits.maxBufferSize,
    maxStorageBufferBindingSize: adapter.limits.maxStorageBufferBindingSize,
  };
}

/** Node 21+ has a navigator without gpu; Node 20 has none. */
function installNavigatorGpu(gpu: { requestAdapter: () => Promise<DawnAdapter> }): void {
  const g = globalThis as { navigator?: object };
  if (g.navigator === undefined) {
    Object.defineProperty(globalThis, 'navigator', { value: {}, configurable: true, writable: true });
  }
  Object.defineProperty(g.navigator, 'gpu', { value: gpu, configurable: true });
}

/** Whether the dynamic loader can find libvulkan.so.1 (ld.so.cache or LD_LIBRARY_PATH). */
function hasVulkanLoader(): boolean {
  const name = 'libvulkan.so.1';
  for (const dir of (process.env['LD_LIBRARY_PATH'] ?? '').split(':').filter((d) => d !== '')) {
    if (existsSync(path.join(dir, name))) return true;
  }
  try {
    return readFileSync('/etc/ld.so.cache').includes(name);
  } catch {
    return true; // no cache to read: let Dawn look
  }
}

function installedVersion(pkg: string): string | null {
  try {
    return (createRequire(import.meta.url)(`${pkg}/package.json`) as { version: string }).version;
  } catch {
    return null;
  }
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
