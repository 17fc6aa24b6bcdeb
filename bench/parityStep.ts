/**
 * Identical-batch parity with the PyTorch reference: the reference's initial weights and its first
 * K batches (masked inputs, targets, masks), dumped by `bench/n2v_torch_parity.py --dump DIR
 * --steps K`, go through our U-Net (widths 'level', batch-norm epsilon 1e-5: the reference's
 * network), our masked MSE and our Adam (epsilon 1e-8, 4e-4); the losses of both, step by step,
 * say whether the two implementations compute the same thing (forward, batch norm, gradients,
 * optimiser) apart from float32 rounding. Recipe differences (initialisation, widths, data) are
 * the A/Bs of bench:parity; this checks the maths under them.
 *
 *   /usr/bin/python3 bench/n2v_torch_parity.py --steps 20 --limit 1 --dump /tmp/parity-dump --out /tmp/parity-dump/run.json
 *   node dist/bench/parityStep.js --dump /tmp/parity-dump [--threads 2] [--name NAME]
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend, type BackendChoice } from '../backend/select.js';
import { buildUNet } from '../models/unet.js';
import { maskedLoss } from '../models/losses.js';
import { FusedAdam } from '../models/optimizer.js';
import { benchArgs, writeResult } from './common.js';

interface Dump {
  weights: Record<string, number[]>;
  steps: number;
  losses: number[];
  switches: Record<string, unknown>;
}

/** Reference module -> our layer name prefix; Sequential index 0/1 and 3/4 are a block's two conv/BN pairs. */
const blocks: Record<string, string> = { e1: 'down0', e2: 'down1', b: 'bottom', d2: 'up1', d1: 'up0' };

async function readFloats(file: string): Promise<Float32Array> {
  const bytes = await fs.readFile(file);
  return new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
}

/** OIHW (PyTorch) -> HWIO (tfjs). */
function torchKernel(values: Float32Array, [o, i, h, w]: number[]): tf.Tensor {
  return tf.tidy(() => tf.transpose(tf.tensor(values, [o, i, h, w]), [2, 3, 1, 0]));
}

async function main(): Promise<void> {
  const args = benchArgs(process.argv.slice(2));
  const dir = path.resolve(args.get('dump') ?? '/tmp/parity-dump');
  const dump = JSON.parse(await fs.readFile(path.join(dir, 'dump.json'), 'utf8')) as Dump;
  if (dump.switches.widths !== 'torch') throw new Error(`the dump's network must be the reference's (widths torch), got ${String(dump.switches.widths)}`);
  const backend = await initBackend({ backend: (args.get('backend') ?? 'wasm') as BackendChoice, threads: Number(args.get('threads') ?? 2) });
  const bnEps = Number(dump.switches.bn_eps);
  const model = buildUNet({ dims: 2, depth: 2, filters: 32, kernelSize: 3, batchNorm: true, variant: 'n2v', widths: 'level', batchNormEpsilon: bnEps }, 1);
  const load = (key: string): Promise<Float32Array> => readFloats(path.join(dir, `${key}.bin`));
  for (const [module, prefix] of Object.entries(blocks)) {
    for (const [convIndex, bnIndex, which] of [[0, 1, 0], [3, 4, 1]]) {
      const key = `${module}.${convIndex}.weight`;
      // The reference's conv bias sits before batch norm, which subtracts it again: ours has none.
      model.getLayer(`${prefix}_${which}_conv`).setWeights([torchKernel(await load(key), dump.weights[key])]);
      const bn = `${module}.${bnIndex}`;
      const t = async (k: string): Promise<tf.Tensor> => tf.tensor(await load(`${bn}.${k}`));
      model.getLayer(`${prefix}_${which}_bn`).setWeights([await t('weight'), await t('bias'), await t('running_mean'), await t('running_var')]);
    }
  }
  model.getLayer('output').setWeights([torchKernel(await load('out.weight'), dump.weights['out.weight']), tf.tensor(await load('out.bias'))]);

  const optimizer = new FusedAdam({ learningRate: 4e-4, epsilon: Number(dump.switches.adam_eps) });
  const apply = (x: tf.Tensor): tf.Tensor => model.apply(x, { training: true }) as tf.Tensor;
  const losses: number[] = [];
  for (let s = 0; s < dump.steps; s++) {
    const shape = [16, 64, 64, 1];
    const [x, y, m] = await Promise.all(['X', 'Y', 'M'].map(async (n) => tf.tensor(await load(`${n}${s}`), shape)));
    const loss = optimizer.minimize(() => maskedLoss(apply(x), y, m, 'mse'), true, model.trainableWeights.map((w) => w.read() as tf.Variable));
    losses.push((await loss!.data())[0]);
    tf.dispose([x, y, m, loss!]);
  }
  const relative = losses.map((l, i) => Math.abs(l - dump.losses[i]) / dump.losses[i]);
  const result = {
    dump: dir,
    backend: backend.name,
    threads: backend.threads,
    steps: dump.steps,
    switches: dump.switches,
    torchLosses: dump.losses,
    ourLosses: losses.map((l) => +l.toFixed(6)),
    relativeDifference: relative.map((r) => +r.toExponential(2)),
    maxRelativeDifference: +Math.max(...relative).toExponential(2),
  };
  const file = await writeResult(`parity-step${args.has('name') ? `-${args.get('name')}` : ''}`, result);
  console.log(`identical batches, ${dump.steps} steps: max relative loss difference ${result.maxRelativeDifference} (step 0: ${result.relativeDifference[0]}); written ${file}`);
  for (let i = 0; i < losses.length; i++) console.log(`step ${i}: pytorch ${dump.losses[i].toFixed(6)} ours ${losses[i].toFixed(6)}`);
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
