/**
 * One error tree for the service (after kafkajs' `KafkaJSError`): every error says whether
 * retrying can help and keeps its cause.
 */
export class KwaError extends Error {
  readonly retriable: boolean

  constructor(message: string, options: { retriable?: boolean; cause?: unknown } = {}) {
    super(message, { cause: options.cause })
    this.name = new.target.name
    this.retriable = options.retriable ?? false
  }
}

/** A bad option: names the option (flag and environment variable) and what it accepts. */
export class ConfigError extends KwaError {
  constructor(
    readonly option: string,
    message: string,
  ) {
    super(`invalid ${option}: ${message}`)
  }
}

/** Where in Kafka a record came from. */
export interface RecordPosition {
  topic: string
  partition: number
  offset: string
}

/** A poison message when the service is set to stop on one (`--on-poison fail`). */
export class PoisonMessageError extends KwaError {
  readonly topic: string
  readonly partition: number
  readonly offset: string
  readonly kind: string

  constructor(position: RecordPosition, kind: string, reason: string) {
    super(
      `poison message at ${position.topic}[${position.partition}]@${position.offset} (${kind}): ${reason}; ` +
        'fix or skip it (e.g. move the group offset past it), or run with --on-poison dead-letter',
    )
    this.topic = position.topic
    this.partition = position.partition
    this.offset = position.offset
    this.kind = kind
  }
}

/** Committed checkpoint metadata that this version cannot read. */
export class CheckpointError extends KwaError {}

export const isKwaError = (error: unknown): error is KwaError => error instanceof KwaError
export const isConfigError = (error: unknown): error is ConfigError => error instanceof ConfigError
export const isPoisonMessageError = (error: unknown): error is PoisonMessageError =>
  error instanceof PoisonMessageError
