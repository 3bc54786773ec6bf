/**
 * `kwa` as a user runs it, for integration tests: a CLI process from source with only the given
 * environment, and a bounded wait for an asynchronous condition.
 */
import { spawn } from 'node:child_process'
import { packageRoot } from '../../consumer/paths'

export interface CliResult {
  status: number | null
  stdout: string
  stderr: string
  ms: number
}

/** A `kwa` process from source with only these environment variables (plus PATH). */
function spawnKwa(args: string[], env: Record<string, string>) {
  const started = Date.now()
  const child = spawn(process.execPath, ['--import', 'tsx', 'consumer/cli.ts', ...args], {
    cwd: packageRoot,
    env: { PATH: process.env.PATH ?? '', KWA_LOG_LEVEL: 'warn', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  const output = { stdout: '', stderr: '' }
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => (output.stdout += chunk))
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => (output.stderr += chunk))
  const exited = new Promise<CliResult>((resolve, reject) => {
    child.once('error', reject)
    child.once('exit', (status) => resolve({ status, ...output, ms: Date.now() - started }))
  })
  return { child, output, exited }
}

/** Runs `kwa` to its exit; throws (after killing it) if it still runs after `timeoutMs`. */
export async function kwa(
  args: string[],
  env: Record<string, string>,
  timeoutMs = 60_000,
): Promise<CliResult> {
  const { child, output, exited } = spawnKwa(args, env)
  let timedOut = false
  const timer = setTimeout(() => {
    timedOut = true
    child.kill('SIGKILL')
  }, timeoutMs)
  try {
    const result = await exited
    if (timedOut)
      throw new Error(
        `kwa ${args.join(' ')} still running after ${timeoutMs} ms:\n${output.stderr}`,
      )
    return result
  } finally {
    clearTimeout(timer)
  }
}

/** A long-running `kwa` (run, tail): `stop()` sends SIGTERM and waits for its exit. */
export interface RunningKwa {
  /** What it printed so far. */
  readonly output: { stdout: string; stderr: string }
  /** Settles when it exits on its own (or once stopped). */
  readonly exited: Promise<CliResult>
  /** How it ended, if it has. */
  ended(): CliResult | undefined
  /** SIGTERM, then its exit; throws (after SIGKILL) if it is still running after `timeoutMs`. */
  stop(timeoutMs?: number): Promise<CliResult>
}

export function startKwa(args: string[], env: Record<string, string>): RunningKwa {
  const { child, output, exited } = spawnKwa(args, env)
  let result: CliResult | undefined
  void exited.then((r) => (result = r))
  return {
    output,
    exited,
    ended: () => result,
    async stop(timeoutMs = 60_000) {
      child.kill('SIGTERM')
      let timer: NodeJS.Timeout | undefined
      const bound = new Promise<never>((_resolve, reject) => {
        timer = setTimeout(() => {
          child.kill('SIGKILL')
          reject(
            new Error(
              `kwa ${args[0]} still running ${timeoutMs} ms after SIGTERM:\n${output.stderr}`,
            ),
          )
        }, timeoutMs)
      })
      try {
        return await Promise.race([exited, bound])
      } finally {
        clearTimeout(timer)
      }
    },
  }
}

/** Polls `done` every `pollMs` until it holds; throws naming `what` after `timeoutMs`. */
export async function eventually(
  what: string,
  done: () => boolean | Promise<boolean>,
  timeoutMs = 90_000,
  pollMs = 500,
): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await done())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, pollMs))
  }
}
