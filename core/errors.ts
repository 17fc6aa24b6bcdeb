/**
 * Typed errors. Each names the file or URL it is about and says what is wrong, so the CLI can
 * print one clear line and map it to a documented exit code.
 */

export const ExitCode = {
  ok: 0,
  /** Anything unexpected: a bug, or an error from a dependency. */
  failure: 1,
  /** Wrong command-line usage (unknown option, missing argument). */
  usage: 2,
  /** An input cannot be used: unreadable, unsupported, corrupt, wrong shape, NaN... */
  input: 3,
  /** An output cannot be written, or would overwrite an input. */
  output: 4,
  /** Interrupted by a signal; the run can be resumed. */
  interrupted: 130,
} as const;
export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode];

export class BlindspotError extends Error {
  readonly exitCode: ExitCode;
  constructor(message: string, exitCode: ExitCode, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.exitCode = exitCode;
  }
}

/** Bad command-line usage. */
export class UsageError extends BlindspotError {
  constructor(message: string) {
    super(message, ExitCode.usage);
  }
}

/** An input file (or URL) that cannot be used as given. */
export class InputError extends BlindspotError {
  readonly file: string;
  readonly problem: string;
  constructor(file: string, problem: string, options?: { cause?: unknown }) {
    super(`${file}: ${problem}`, ExitCode.input, options);
    this.file = file;
    this.problem = problem;
  }
}

/** An output that cannot be written (or must not be: it would overwrite an input). */
export class OutputError extends BlindspotError {
  readonly file: string;
  readonly problem: string;
  constructor(file: string, problem: string, options?: { cause?: unknown }) {
    super(`${file}: ${problem}`, ExitCode.output, options);
    this.file = file;
    this.problem = problem;
  }
}

const OUTPUT_SYSCALLS = new Set(['mkdir', 'write', 'open-write', 'rename', 'unlink', 'rmdir', 'rm', 'copyfile', 'symlink', 'link', 'chmod', 'utime', 'futime', 'ftruncate']);
const FS_REASONS: Record<string, string> = {
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  ENOENT: 'does not exist',
  EEXIST: 'exists already',
  ENOTDIR: 'a part of the path is a file, not a folder',
  EISDIR: 'is a folder, not a file',
  EROFS: 'is on a read-only file system',
  ENOSPC: 'no space left on the device',
  EDQUOT: 'disk quota exceeded',
  ELOOP: 'too many levels of symbolic links',
  EMFILE: 'too many open files',
  ENAMETOOLONG: 'the name is too long',
};

/**
 * The one place a failure becomes an exit code: a BlindspotError keeps its own; a file-system error
 * a user can cause (permissions, a missing file, a full disk) becomes an InputError (exit 3) when it
 * came from reading and an OutputError (exit 4) when it came from writing, naming the path; anything
 * else is unexpected (exit 1).
 */
export function classifyError(err: unknown): BlindspotError | null {
  if (err instanceof BlindspotError) return err;
  const e = err as NodeJS.ErrnoException;
  if (e && typeof e === 'object' && typeof e.code === 'string' && e.code in FS_REASONS) {
    const file = e.path ?? (e as { dest?: string }).dest ?? '(unknown path)';
    const reason = FS_REASONS[e.code];
    const writing = OUTPUT_SYSCALLS.has(e.syscall ?? '') || e.code === 'ENOSPC' || e.code === 'EDQUOT' || e.code === 'EROFS';
    return writing ? new OutputError(file, `cannot be written: ${reason}`, { cause: err }) : new InputError(file, `cannot be read: ${reason}`, { cause: err });
  }
  return null;
}

/** Whether stack traces are wanted: `--debug` on the command line or BLINDSPOT_DEBUG=1. */
export function debugWanted(argv: readonly string[] = process.argv): boolean {
  return argv.includes('--debug') || process.env.BLINDSPOT_DEBUG === '1';
}

/**
 * The exit code for `err`, after writing its message to `write` (stderr): one line for anything a
 * user can cause; the stack only for unexpected errors with `debug`.
 */
export function reportFailure(err: unknown, program: string, debug: boolean, write: (text: string) => void = (t) => process.stderr.write(t)): ExitCode {
  const known = classifyError(err);
  if (known) {
    write(`${program}: ${known.message}\n`);
    if (debug) write(`${(err as Error)?.stack ?? String(err)}\n`);
    return known.exitCode;
  }
  const message = (err as Error)?.message ?? String(err);
  write(`${program}: unexpected error: ${debug ? ((err as Error)?.stack ?? message) : `${message} (rerun with --debug for the stack trace)`}\n`);
  return ExitCode.failure;
}

/**
 * Ends a command-line program: the exit code `run` resolves to, or the one its error maps to
 * (classifyError).
 */
export function exitWithOutcome(run: Promise<number>, program: string): void {
  run.then(
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      process.exitCode = reportFailure(err, program, debugWanted());
    },
  );
}
