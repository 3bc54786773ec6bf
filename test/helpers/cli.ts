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

/** Runs `kwa` from source with only these environment variables (plus PATH). */
export function kwa(
  args: string[],
  env: Record<string, string>,
  timeoutMs = 60_000,
): Promise<CliResult> {
  const started = Date.now()
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'consumer/cli.ts', ...args], {
      cwd: packageRoot,
      env: { PATH: process.env.PATH ?? '', KWA_LOG_LEVEL: 'warn', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk))
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk))
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`kwa ${args.join(' ')} still running after ${timeoutMs} ms:\n${stderr}`))
    }, timeoutMs)
    child.once('error', reject)
    child.once('exit', (status) => {
      clearTimeout(timer)
      resolve({ status, stdout, stderr, ms: Date.now() - started })
    })
  })
}

/** Polls `done` every 500 ms until it holds; throws naming `what` after `timeoutMs`. */
export async function eventually(
  what: string,
  done: () => Promise<boolean>,
  timeoutMs = 90_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await done())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 500))
  }
}
