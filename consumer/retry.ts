import { authorizationFailure, KwaError } from './errors'
import type { Logger } from './logger'

/**
 * Bounded retries of broker calls that kafkajs gives up on too early (a controller or coordinator
 * that is "not available" for tens of seconds outlasts kafkajs' own few retries) or waits on for
 * too long (a hung broker: every attempt may wait for the request timeout). Used where the broker
 * is called at start (topic provisioning, the changelog reader's join) and in restores.
 */

/**
 * How long the broker calls made at start (connecting, provisioning topics, the changelog
 * reader's first join) retry transient errors: an overloaded controller has been seen "not
 * available" for tens of seconds. Beyond it the process exits with code 1, and its
 * orchestrator's restart backoff takes over.
 */
export const START_RETRY_BOUND_MS = 120_000

/** Errors a busy or restarting broker answers; everything else is escalated at once. */
const transientErrorNames = new Set([
  'KafkaJSBrokerNotFound',
  'KafkaJSConnectionClosedError',
  'KafkaJSConnectionError',
  // kafkajs gives up on FindCoordinator after its own retries and calls that non-retriable.
  'KafkaJSGroupCoordinatorNotFound',
  'KafkaJSLockTimeout',
  'KafkaJSMetadataNotLoaded',
  'KafkaJSNoBrokerAvailableError',
  // Only thrown after retrying errors kafkajs itself judged retriable.
  'KafkaJSNumberOfRetriesExceeded',
  'KafkaJSRequestTimeoutError',
  'KafkaJSStaleTopicMetadataAssignment',
  // e.g. "Timed out while waiting for topic leaders" after a create.
  'KafkaJSTimeout',
  'KafkaJSTopicMetadataNotLoaded',
])

/**
 * Whether retrying a broker call can help: connection and timeout errors, kafkajs' give-ups on
 * them, and protocol errors Kafka itself classifies as retriable (coordinator or controller not
 * available, request timed out, leader not available, ...). Not: authentication, authorization,
 * invalid requests, or a KwaError that says it is not retriable (e.g. a mismatched changelog).
 */
export function isTransientBrokerError(error: unknown): boolean {
  if (error instanceof KwaError) return error.retriable
  // Also when kafkajs calls it something transient (a refused FindCoordinator: "not found").
  if (authorizationFailure(error) !== undefined) return false
  if (typeof error !== 'object' || error === null) return false
  const { name, type, retriable, errors } = error as {
    name?: unknown
    type?: unknown
    retriable?: unknown
    errors?: unknown
  }
  if (name === 'KafkaJSAggregateError') {
    return Array.isArray(errors) && errors.length > 0 && errors.every(isTransientBrokerError)
  }
  if (typeof name === 'string' && transientErrorNames.has(name)) return true
  return typeof type === 'string' && retriable === true
}

/** A broker call still failing (or unanswered) when its retry bound ran out. */
export class BrokerRetriesExhaustedError extends KwaError {
  /** The last error the broker answered (not `cause`: kafkajs would judge that instead). */
  readonly lastError: unknown

  constructor(
    readonly what: string,
    readonly attempts: number,
    readonly elapsedMs: number,
    cause: unknown,
  ) {
    super(
      `${what} failed: the broker still answered "${messageOf(cause)}" after ${attempts} ` +
        `attempt(s) in ${Math.round(elapsedMs / 1000)} s; check the brokers' health (controller, ` +
        'group and transaction coordinators)',
      // Not retriable, and without kafkajs' own verdict on the cause deciding for us.
      { retriable: false },
    )
    this.lastError = cause
  }
}

export const isBrokerRetriesExhausted = (error: unknown): error is BrokerRetriesExhaustedError =>
  error instanceof BrokerRetriesExhaustedError

/** Backoff between attempts: doubling from the first delay up to the largest, ±20% jitter. */
export const RETRY_FIRST_DELAY_MS = 200
export const RETRY_MAX_DELAY_MS = 5_000

export interface RetryOptions {
  /** What is attempted, for logs and the final error, e.g. `provisioning topics`. */
  what: string
  /** Give up this long after the first attempt started (an attempt in flight included). */
  boundMs: number
  log?: Logger
  /** Log fields saying where, e.g. {topic, partition}. */
  where?: Record<string, unknown>
  /** Default: isTransientBrokerError. */
  isRetriable?: (error: unknown) => boolean
  /** Tests: the clock and the sleep. */
  now?: () => number
  sleep?: (ms: number) => Promise<void>
}

const defaultSleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms).unref())

/**
 * Runs `attempt` until it succeeds, retrying transient errors with exponential backoff until
 * `boundMs` after the start; then throws BrokerRetriesExhaustedError. An attempt still pending
 * at the bound is abandoned (its result ignored), so a hung broker cannot stretch the bound.
 * A non-transient error is thrown as it is, at once.
 */
export async function retryWithBackoff<T>(
  attempt: () => Promise<T>,
  options: RetryOptions,
): Promise<T> {
  const now = options.now ?? Date.now
  const sleep = options.sleep ?? defaultSleep
  const isRetriable = options.isRetriable ?? isTransientBrokerError
  const started = now()
  const deadline = started + options.boundMs
  let delay = RETRY_FIRST_DELAY_MS
  for (let attempts = 1; ; attempts++) {
    try {
      return await withDeadline(attempt(), deadline - now(), options.what)
    } catch (error) {
      if (!isRetriable(error)) throw error
      const jittered = Math.round(delay * (0.8 + 0.4 * Math.random()))
      if (now() + jittered >= deadline) {
        const exhausted = new BrokerRetriesExhaustedError(
          options.what,
          attempts,
          now() - started,
          error,
        )
        options.log?.error(
          { ...options.where, attempts, boundMs: options.boundMs, err: error },
          `${options.what}: giving up, retry bound reached`,
        )
        throw exhausted
      }
      options.log?.warn(
        { ...options.where, attempt: attempts, retryInMs: jittered, err: error },
        `${options.what} failed; retrying`,
      )
      await sleep(jittered)
      delay = Math.min(RETRY_MAX_DELAY_MS, delay * 2)
    }
  }
}

/** A transient error once `ms` passed without an answer (the promise is left to settle). */
function withDeadline<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new KwaError(`${what}: no answer from the broker`, { retriable: true })),
      Math.max(0, ms),
    )
  })
  promise.catch(() => undefined) // abandoned at the deadline: its rejection is not unhandled
  return Promise.race([promise, expired]).finally(() => clearTimeout(timer))
}

function messageOf(error: unknown): string {
  if (error instanceof Error) {
    const errors = (error as { errors?: unknown }).errors
    if (Array.isArray(errors) && errors.length > 0) {
      return `${error.message}: ${errors.map((e) => messageOf(e)).join('; ')}`
    }
    return error.message
  }
  return String(error)
}
