/** `blindspot plan`: blocks, bytes and measured per-block cost of a streaming denoise, and a shard count for a target wall time. */
import { UsageError, ExitCode } from '../core/errors.js';
import { type BlockCost, type DenoisePlan, planDenoise } from '../pipeline/plan.js';
import { parseByteSize } from '../pipeline/streamDenoise.js';
import { resolveShard } from '../pipeline/shard.js';
import { commonOptions, engineOptions, engineRequest, intOption, parse, parseDuration, setUp, shapeOption } from './options.js';

export const PLAN_HELP = `Usage: blindspot plan <input> --model <model-dir> [options]

What a streaming denoise of <input> (.zarr, OME-Zarr, TIFF stack, frame folder; local or s3://) would do
with this model and memory bound: block (= output chunk) shape and count, bytes in and out, memory plan;
then the cost of one block measured here by denoising a run of real blocks (after a warm-up block), the
total on one such process, and the shard count that meets --target.

Options:
  --model <dir>            trained model folder (required)
  --max-memory SIZE        as for denoise (default 2GiB); the blocks follow from it
  --output-chunks YxX|ZxYxX  as for denoise: the block shape (give what the shards will use)
  --target DURATION        wall time to meet, e.g. 30m, 2h, 1d (default 1h)
  --sample-blocks N        blocks to time, one contiguous run from the middle (default 8)
  --no-measure             the plan only, no timing
  --s3-endpoint URL --channel N --time N --tta   as for denoise
  --engine auto|onnx|tfjs --device auto|cpu|cuda|tensorrt   as for denoise: the blocks are timed on this engine
  --backend B --threads N --json

The cost is for this machine and engine; run plan on the machine type the shards will use.

Example:
  blindspot plan s3://lab/raw/vol.zarr --model models/vol --max-memory 8GiB --target 2h --json`;

function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let k = 0;
  while (n >= 1024 && k < units.length - 1) {
    n /= 1024;
    k++;
  }
  return `${n.toFixed(k === 0 ? 0 : 1)} ${units[k]}`;
}

function formatSeconds(s: number): string {
  if (s < 120) return `${s.toFixed(1)} s`;
  if (s < 7200) return `${(s / 60).toFixed(1)} min`;
  if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} d`;
}

/** The plan in a few lines for people. */
export function describePlan(plan: DenoisePlan, cost?: BlockCost): string {
  const lines = [
    `${plan.input}: shape [${plan.shape.join(', ')}] ${plan.dtype}, ${formatBytes(plan.inputBytes)}`,
    `  blocks: ${plan.blocks} of [${plan.blockShape.join(', ')}] voxels; output level 0 ${formatBytes(plan.outputBytes)} uncompressed`,
    `  memory plan: ${formatBytes(plan.memory.totalBytes)} (cache ${formatBytes(plan.memory.cacheBytes)}, ${plan.memory.tickets} tile(s) in flight)`,
  ];
  if (plan.shard) lines.push(`  shard ${plan.shard.index}/${plan.shard.count}: blocks ${plan.shard.blockStart}..${plan.shard.blockEnd - 1}`);
  if (cost) {
    lines.push(`  measured with engine ${cost.engine}: ${cost.secondsPerBlock.toFixed(2)} s per block (${cost.megavoxelsPerSecond.toFixed(2)} Mvoxel/s, ${cost.sampledBlocks} block(s) timed)`);
    lines.push(`  one process: ${formatSeconds(cost.totalSeconds)}`);
    if (cost.suggestedShards !== undefined && cost.targetSeconds !== undefined) {
      lines.push(`  for ${formatSeconds(cost.targetSeconds)}: --shard-count ${cost.suggestedShards} (about ${formatSeconds(cost.totalSeconds / cost.suggestedShards)} each)`);
    }
  }
  return lines.join('\n');
}

export async function runPlan(args: string[]): Promise<number> {
  const { values, positionals } = parse(
    args,
    {
      ...commonOptions,
      model: { type: 'string' },
      'max-memory': { type: 'string' },
      target: { type: 'string' },
      'sample-blocks': { type: 'string' },
      measure: { type: 'boolean', default: true },
      's3-endpoint': { type: 'string' },
      channel: { type: 'string' },
      time: { type: 'string' },
      tta: { type: 'boolean', default: false },
      shard: { type: 'string' },
      'shard-count': { type: 'string' },
      'output-chunks': { type: 'string' },
      ...engineOptions,
    },
    true,
  );
  if (values.help) {
    process.stdout.write(PLAN_HELP + '\n');
    return ExitCode.ok;
  }
  if (positionals.length !== 1) throw new UsageError('plan takes exactly one input (blindspot plan --help)');
  if (!values.model) throw new UsageError('plan needs --model <model-dir>');
  const targetSeconds = parseDuration(values.target ?? '1h');
  const { reporter, backend } = await setUp(values);
  const { plan, cost } = await planDenoise({
    input: positionals[0],
    modelDir: values.model,
    maxMemoryBytes: parseByteSize(values['max-memory'] ?? '2GiB'),
    s3: values['s3-endpoint'] ? { endpoint: values['s3-endpoint'] } : undefined,
    channel: intOption('channel', values.channel),
    time: intOption('time', values.time),
    tta: values.tta,
    shard: resolveShard({ shard: values.shard, shardCount: values['shard-count'] }),
    outputChunks: shapeOption('output-chunks', values['output-chunks']),
    measure: values.measure,
    engine: engineRequest(values),
    backend: `${backend.name} (${backend.threads} thread(s))`,
    sampleBlocks: intOption('sample-blocks', values['sample-blocks']),
    targetSeconds,
    onEvent: (e) => {
      if (e.type === 'engine') reporter.denoise(e);
    },
  });
  reporter.event('plan', { ...plan, ...(cost ? { cost } : {}) });
  if (!reporter.json) process.stdout.write(describePlan(plan, cost) + '\n');
  return ExitCode.ok;
}
