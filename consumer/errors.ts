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

/** What an ACL must allow: the operation and the resource, as `kafka-acls` names them. */
export interface AclNeed {
  /** e.g. `Write`, or `Read, Write and DescribeConfigs` */
  operation: string
  /** e.g. `topic "telemetry"`, `group "kwa-aggregator" (prefixed)` */
  resource: string
}

/**
 * The broker refused a request for want of an ACL. Names the operation and the resource to allow,
 * never retried: a missing ACL does not appear by waiting.
 */
export class AuthorizationError extends KwaError {
  constructor(
    readonly need: AclNeed,
    doing: string,
    readonly brokerError: string,
  ) {
    super(
      `not authorized to ${doing}: allow ${need.operation} on ${need.resource} for this ` +
        `principal (the broker answered ${brokerError}; ACLs: docs/OPERATIONS.md, Security)`,
    )
  }
}

/** Kafka's authorization errors, by the kind of resource each is about. */
const authorizationErrorKinds = {
  TOPIC_AUTHORIZATION_FAILED: 'topic',
  GROUP_AUTHORIZATION_FAILED: 'group',
  TRANSACTIONAL_ID_AUTHORIZATION_FAILED: 'transactionalId',
  CLUSTER_AUTHORIZATION_FAILED: 'cluster',
} as const
export type AuthorizationErrorCode = keyof typeof authorizationErrorKinds
export type AclResourceKind = (typeof authorizationErrorKinds)[AuthorizationErrorCode]

/**
 * The Kafka authorization error in `error` or among its causes (kafkajs wraps them: `cause`, a
 * retrier's give-up, an aggregate of per-topic errors), if any.
 */
export function authorizationFailure(
  error: unknown,
  depth = 0,
): AuthorizationErrorCode | undefined {
  if (typeof error !== 'object' || error === null || depth > 8) return undefined
  const { type, cause, errors } = error as { type?: unknown; cause?: unknown; errors?: unknown }
  if (typeof type === 'string' && type in authorizationErrorKinds)
    return type as AuthorizationErrorCode
  if (Array.isArray(errors)) {
    for (const inner of errors) {
      const found = authorizationFailure(inner, depth + 1)
      if (found !== undefined) return found
    }
  }
  return authorizationFailure(cause, depth + 1)
}

/**
 * `error` as an AuthorizationError when it is a refusal for want of an ACL, naming what the call
 * (`doing`) needs on the kind of resource the broker refused; else undefined. An error already
 * attributed is returned as it is.
 */
export function asAuthorizationError(
  error: unknown,
  doing: string,
  needs: Partial<Record<AclResourceKind, AclNeed>>,
): AuthorizationError | undefined {
  for (let e = error, depth = 0; e instanceof Error && depth < 8; depth++, e = e.cause) {
    if (e instanceof AuthorizationError) return e
  }
  const code = authorizationFailure(error)
  if (code === undefined) return undefined
  const need = needs[authorizationErrorKinds[code]] ?? {
    operation: 'an operation',
    resource: `a ${authorizationErrorKinds[code]} resource`,
  }
  return new AuthorizationError(need, doing, code)
}

export const isAuthorizationError = (error: unknown): error is AuthorizationError =>
  error instanceof AuthorizationError

/** ACL resources as `kafka-acls` names them, for AclNeed. */
export const aclResource = {
  topic: (name: string) => `topic "${name}"`,
  group: (name: string, prefixed = false) => `group "${name}"${prefixed ? ' (prefixed)' : ''}`,
  transactionalId: (name: string, prefixed = false) =>
    `transactional id "${name}"${prefixed ? ' (prefixed)' : ''}`,
  cluster: 'the cluster',
}
