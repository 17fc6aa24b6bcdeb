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
 *   node dist/bench/parityStep.js --dump /tmp/parity-dump [--threads 2] [--name NAME] [--backend wasm|cpu] [--grad-only]
 *   /usr/bin/python3 bench/parity_grad64.py /tmp/parity-dump   (ours' and the reference's first gradients against float64)
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

  // Our weight tensors and the reference's name for each (conv kernels compared in the reference's OIHW order).
  const pairs: Array<{ torch: string; ours: () => tf.Tensor; kernel: boolean }> = [];
  const weightOf = (layer: string, i: number) => () => model.getLayer(layer).getWeights()[i];
  for (const [module, prefix] of Object.entries(blocks)) {
    for (const [convIndex, bnIndex, which] of [[0, 1, 0], [3, 4, 1]]) {
      pairs.push({ torch: `${module}.${convIndex}.weight`, ours: weightOf(`${prefix}_${which}_conv`, 0), kernel: true });
      pairs.push({ torch: `${module}.${bnIndex}.weight`, ours: weightOf(`${prefix}_${which}_bn`, 0), kernel: false });
      pairs.push({ torch: `${module}.${bnIndex}.bias`, ours: weightOf(`${prefix}_${which}_bn`, 1), kernel: false });
    }
  }
  pairs.push({ torch: 'out.weight', ours: weightOf('output', 0), kernel: true }, { torch: 'out.bias', ours: weightOf('output', 1), kernel: false });
  /** max |ours - reference| / max |reference| over each tensor; the largest of them and where. */
  const compare = async (folder: string, ours: (p: (typeof pairs)[number]) => tf.Tensor): Promise<{ worst: number; at: string; perTensor: Record<string, number> }> => {
    const perTensor: Record<string, number> = {};
    for (const p of pairs) {
      const file = path.join(dir, folder, `${p.torch}.bin`);
      const reference = p.kernel ? torchKernel(await readFloats(file), dump.weights[p.torch]) : tf.tensor(await readFloats(file));
      const mine = ours(p);
      const [diff, scale] = tf.tidy(() => [tf.max(tf.abs(tf.sub(tf.reshape(mine, reference.shape), reference))), tf.max(tf.abs(reference))]);
      perTensor[p.torch] = +((await diff.data())[0] / Math.max(1e-30, (await scale.data())[0])).toExponential(2);
      tf.dispose([reference, diff, scale]);
    }
    const at = Object.entries(perTensor).sort((a, b) => b[1] - a[1])[0];
    return { worst: at[1], at: at[0], perTensor };
  };
  const hasSteps = await fs.access(path.join(dir, 'grad0')).then(() => true, () => false);

  const optimizer = new FusedAdam({ learningRate: 4e-4, epsilon: Number(dump.switches.adam_eps) });
  const apply = (x: tf.Tensor): tf.Tensor => model.apply(x, { training: true }) as tf.Tensor;
  const losses: number[] = [];
  const checks: Array<{ what: string; worst: number; at: string }> = [];
  for (let s = 0; s < dump.steps; s++) {
    const shape = [16, 64, 64, 1];
    const [x, y, m] = await Promise.all(['X', 'Y', 'M'].map(async (n) => tf.tensor(await load(`${n}${s}`), shape)));
    if (s === 0 && hasSteps) {
      // The first gradients from identical weights and batch: forward, batch norm and backward, no optimiser.
      const variables = model.trainableWeights.map((w) => w.read() as tf.Variable);
      const { grads } = tf.variableGrads(() => maskedLoss(apply(x), y, m, 'mse'), variables);
      const byLayer = new Map(model.trainableWeights.map((w, i) => [w, grads[variables[i].name]]));
      const gradOf = (p: (typeof pairs)[number]): tf.Tensor => {
        const layerWeight = model.trainableWeights.find((w) => w.read() === p.ours());
        return layerWeight ? byLayer.get(layerWeight)! : tf.zeros([1]);
      };
      const g = await compare('grad0', gradOf);
      // Ours in the reference's layout, for bench/parity_grad64.py (both against float64 gradients).
      const gradDir = path.join(dir, `ours_grad0_${backend.name}`);
      await fs.mkdir(gradDir, { recursive: true });
      for (const p of pairs) {
        const t = p.kernel ? tf.transpose(gradOf(p), [3, 2, 0, 1]) : gradOf(p);
        await fs.writeFile(path.join(gradDir, `${p.torch}.bin`), new Uint8Array(((await t.data()) as Float32Array).buffer));
        if (t !== gradOf(p)) t.dispose();
      }
      checks.push({ what: 'gradients at step 0', worst: g.worst, at: g.at });
      tf.dispose(Object.values(grads));
      if (args.get('grad-only') === 'true') {
        console.log(`gradients at step 0 (${backend.name}): worst tensor ${g.at}, ${g.worst}; written to ${gradDir}`);
        return;
      }
    }
    const loss = optimizer.minimize(() => maskedLoss(apply(x), y, m, 'mse'), true, model.trainableWeights.map((w) => w.read() as tf.Variable));
    losses.push((await loss!.data())[0]);
    tf.dispose([x, y, m, loss!]);
    if (hasSteps && s < 3) {
      const w = await compare(`after${s}`, (p) => p.ours());
      checks.push({ what: `weights after update ${s + 1}`, worst: w.worst, at: w.at });
    }
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
    /** max |ours - reference| / max |reference| of the worst tensor, and which. */
    checks,
  };
  const file = await writeResult(`parity-step${args.has('name') ? `-${args.get('name')}` : ''}`, result);
  console.log(`identical batches, ${dump.steps} steps: max relative loss difference ${result.maxRelativeDifference} (step 0: ${result.relativeDifference[0]}); written ${file}`);
  for (const c of checks) console.log(`${c.what}: worst tensor ${c.at}, max abs difference / max abs value ${c.worst}`);
  for (let i = 0; i < losses.length; i++) console.log(`step ${i}: pytorch ${dump.losses[i].toFixed(6)} ours ${losses[i].toFixed(6)}`);
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
