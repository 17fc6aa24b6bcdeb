/**
 * piscina task: zstd-compresses or decompresses one chunk's bytes (numcodecs' wasm build, the same
 * code and level as in the main thread, so the same bytes). The input arrives as a moved ArrayBuffer
 * and the result goes back moved: nothing is copied between threads.
 */
import { move } from 'piscina';
import Zstd from 'numcodecs/zstd';

export type CodecTask = { op: 'zstd-encode'; level: number; bytes: ArrayBuffer } | { op: 'zstd-decode'; bytes: ArrayBuffer };

/** zstd at `level`, in this thread. */
export function zstdEncodeHere(bytes: Uint8Array, level: number): Promise<Uint8Array> {
  return Zstd.fromConfig({ id: 'zstd', level }).encode(bytes);
}

/** One zstd frame decompressed, in this thread. */
export function zstdDecodeHere(bytes: Uint8Array): Promise<Uint8Array> {
  return new Zstd().decode(bytes);
}

export default async function codecTask(task: CodecTask): Promise<Uint8Array> {
  const bytes = new Uint8Array(task.bytes);
  const result = task.op === 'zstd-encode' ? await zstdEncodeHere(bytes, task.level) : await zstdDecodeHere(bytes);
  // numcodecs copies its result out of the wasm heap into a fresh array: movable.
  return move(result) as unknown as Uint8Array;
}
