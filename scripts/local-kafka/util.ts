// Small utilities: deferreds, timeouts, free ports, execFile, file and process checks, error text.
import { type ChildProcess, execFile } from 'node:child_process'
import { promises as fs } from 'node:fs'
import net from 'node:net'
import type { ProcessExit } from './types'

export const LOG_TAIL_LINES = 40

export class Deferred<T> {
  readonly promise: Promise<T>
  resolve!: (value: T) => void
  reject!: (error: Error) => void
  constructor() {
    this.promise = new Promise<T>((resolve, reject) => {
      this.resolve = resolve
      this.reject = reject
    })
    this.promise.catch(() => undefined) // a late rejection nobody awaits is not an error
  }
}

export function waitForExit(child: ChildProcess): Promise<ProcessExit> {
  if (child.exitCode !== null || child.signalCode !== null) {
    return Promise.resolve({ code: child.exitCode, signal: child.signalCode })
  }
  return new Promise((resolve) => {
    child.once('exit', (code, signal) => resolve({ code, signal }))
  })
}

export function withTimeout<T>(promise: Promise<T>, timeoutMs: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)),
      timeoutMs,
    )
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

/** Ask the OS for a free port on 127.0.0.1 (there is a small window before Kafka binds it). */
export async function freePort(exclude: number[] = []): Promise<number> {
  for (;;) {
    const port = await new Promise<number>((resolve, reject) => {
      const server = net.createServer()
      server.unref()
      server.once('error', reject)
      server.listen(0, '127.0.0.1', () => {
        const address = server.address()
        const found = typeof address === 'object' && address ? address.port : 0
        server.close(() => resolve(found))
      })
    })
    if (port > 0 && !exclude.includes(port)) return port
  }
}

interface ExecOptions {
  cwd?: string
  timeoutMs: number
}

export function execFileText(
  command: string,
  args: string[],
  options: ExecOptions,
): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(
      command,
      args,
      {
        cwd: options.cwd,
        timeout: options.timeoutMs,
        maxBuffer: 32 * 1024 * 1024,
        encoding: 'utf8',
      },
      (error, stdout, stderr) => {
        if (error)
          reject(
            new Error(`${command} failed: ${error.message}\n${lastLines(`${stdout}\n${stderr}`)}`),
          )
        else resolve(stdout)
      },
    )
  })
}

function lastLines(text: string, count = LOG_TAIL_LINES): string {
  return text.trim().split('\n').slice(-count).join('\n')
}

export async function pathExists(p: string): Promise<boolean> {
  return fs.access(p).then(
    () => true,
    () => false,
  )
}

export async function fileSize(p: string): Promise<number> {
  return fs.stat(p).then(
    (s) => s.size,
    () => 0,
  )
}

export async function fileAgeMs(p: string): Promise<number> {
  return fs.stat(p).then(
    (s) => Date.now() - s.mtimeMs,
    () => 0,
  )
}

export function isProcessAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return errorCode(error) === 'EPERM' // exists, owned by someone else
  }
}

export function errorCode(error: unknown): string | undefined {
  if (typeof error === 'object' && error !== null && 'code' in error) {
    const code: unknown = error.code
    return typeof code === 'string' ? code : undefined
  }
  return undefined
}

export function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error)
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}
