import pino from 'pino'

export type Logger = pino.Logger
export const logLevels = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const
export type LogLevel = (typeof logLevels)[number]

/**
 * Structured JSON logs on stderr (stdout is kept for data, e.g. `kwa tail`).
 * Components take a namespaced child: `logger.child({ ns: 'Runner' })`.
 */
export function createLogger(level: LogLevel = 'info'): Logger {
  return pino({ level, base: { pid: process.pid } }, pino.destination({ fd: 2, sync: true }))
}

export const namespace = (logger: Logger, ns: string): Logger => logger.child({ ns })
