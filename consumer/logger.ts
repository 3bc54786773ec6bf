import pino from 'pino'

export type Logger = pino.Logger
export const logLevels = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const
export type LogLevel = (typeof logLevels)[number]

/** Fields whose values are never logged: passwords, secrets, private keys, credentials. */
const secretField = /pass(word|phrase)|secret|credential|^ssl_?key$|private_?key/i
export const redacted = '[redacted]'

const isPlainObject = (value: unknown): value is Record<string, unknown> => {
  if (value === null || typeof value !== 'object') return false
  const proto = Object.getPrototypeOf(value) as unknown
  return proto === Object.prototype || proto === null
}

/**
 * A copy of `value` with every secret field (at any depth up to 6, in plain objects and arrays)
 * replaced by "[redacted]"; `value` itself when it holds none, so most log calls cost a walk.
 * Errors, buffers and class instances are left to pino's serializers.
 */
export function redactSecrets<T>(value: T, depth = 6): T {
  if (depth <= 0) return value
  if (Array.isArray(value)) {
    let copy: unknown[] | undefined
    value.forEach((item: unknown, i) => {
      const clean = redactSecrets(item, depth - 1)
      if (clean !== item) (copy ??= [...(value as unknown[])])[i] = clean
    })
    return (copy ?? value) as T
  }
  if (!isPlainObject(value)) return value
  let copy: Record<string, unknown> | undefined
  for (const [key, item] of Object.entries(value)) {
    const clean =
      secretField.test(key) && item !== undefined && item !== null
        ? redacted
        : redactSecrets(item, depth - 1)
    if (clean !== item) (copy ??= { ...value })[key] = clean
  }
  return (copy ?? value) as T
}

/**
 * Structured JSON logs on stderr (stdout is kept for data, e.g. `kwa tail`).
 * Components take a namespaced child: `logger.child({ ns: 'Runner' })`. Secret fields
 * (`saslPassword`, `sslKey`, anything named like a password or secret) are redacted wherever
 * they appear in a log call's object or a child's bindings.
 */
export function createLogger(
  level: LogLevel = 'info',
  destination: pino.DestinationStream = pino.destination({ fd: 2, sync: true }),
): Logger {
  const logger = pino(
    { level, base: { pid: process.pid }, formatters: { log: (object) => redactSecrets(object) } },
    destination,
  )
  // pino's redact option takes fixed paths only, and its bindings formatter sees the root's
  // bindings only: children (which inherit this method) redact their bindings here instead.
  // Unbound on purpose: a child's own child must chain from that child, not from the root.
  // eslint-disable-next-line @typescript-eslint/unbound-method
  const child = logger.child
  logger.child = function (this: Logger, bindings, options) {
    return child.call(this, redactSecrets(bindings), options)
  } as Logger['child']
  return logger
}

export const namespace = (logger: Logger, ns: string): Logger => logger.child({ ns })
