// Shared by the harness files: the fixed geometry, the delivery mode, small utilities, waits.
import path from 'node:path'

// ---------------------------------------------------------------------------------------------
// Fixed geometry of every scenario
// ---------------------------------------------------------------------------------------------

/** Input (and output) partitions. */
export const PARTITIONS = 4
/** The window geometry given to kwa and to the reference. */
export const WINDOW = { sizeMs: 2_000, graceMs: 500 } as const
export const SESSION_TIMEOUT_MS = 6_000
/** Synthetic event time of the first tick (not wall clock). */
export const T0 = 1_700_000_000_000

export const REPO_ROOT = path.resolve(__dirname, '..', '..')

export type Delivery = 'exactly-once' | 'at-least-once'

/** `--delivery` given to replicas: KWA_CHAOS_DELIVERY, default exactly-once; "none" omits it. */
export function deliveryFromEnv(): Delivery | null {
  const value = process.env['KWA_CHAOS_DELIVERY']?.trim() || 'exactly-once'
  if (value === 'none') return null
  if (value === 'exactly-once' || value === 'at-least-once') return value
  throw new Error(`KWA_CHAOS_DELIVERY must be exactly-once, at-least-once or none, not "${value}"`)
}

// ---------------------------------------------------------------------------------------------
// Small utilities
// ---------------------------------------------------------------------------------------------

export const sleep = (ms: number): Promise<void> =>
  new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)))

export const errorText = (error: unknown): string =>
  error instanceof Error ? error.message : String(error)

export const seconds = (ms: number): string => `${(ms / 1000).toFixed(1)} s`

/** "2s", "500ms": the CLI's duration syntax. */
export const durationFlag = (ms: number): string => (ms % 1000 === 0 ? `${ms / 1000}s` : `${ms}ms`)

/** A stable 32-bit seed from a string (FNV-1a). */
export function seedOf(text: string): number {
  let h = 0x811c9dc5
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193)
  return h >>> 0
}

/** Polls `done` every `everyMs` until it holds (true) or `timeoutMs` passed (false). */
export async function pollUntil(
  done: () => boolean | Promise<boolean>,
  timeoutMs: number,
  everyMs = 100,
): Promise<boolean> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (await done()) return true
    if (Date.now() >= deadline) return false
    await sleep(everyMs)
  }
}

export function withTimeout<T>(promise: Promise<T>, timeoutMs: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`timed out after ${seconds(timeoutMs)}: ${what}`)),
      timeoutMs,
    )
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}
