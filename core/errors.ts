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

/**
 * Ends a command-line program: the exit code `run` resolves to, or the one its error maps to (a
 * BlindspotError prints its one-line message; anything else is unexpected and prints its stack).
 */
export function exitWithOutcome(run: Promise<number>, program: string): void {
  run.then(
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      if (err instanceof BlindspotError) {
        process.stderr.write(`${program}: ${err.message}\n`);
        process.exitCode = err.exitCode;
      } else {
        process.stderr.write(`${program}: unexpected error: ${(err as Error)?.stack ?? String(err)}\n`);
        process.exitCode = ExitCode.failure;
      }
    },
  );
}
