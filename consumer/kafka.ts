import { readFileSync } from 'node:fs'
import type { ConnectionOptions } from 'node:tls'
import { Kafka, logLevel as KafkaLogLevel, type LogEntry } from 'kafkajs'
import { optionLabel, type Config, type OptionName } from './config'
import { ConfigError } from './errors'
import type { Logger } from './logger'

/** The options of every command that connects to Kafka: TLS and SASL. */
export const securityOptions = [
  'ssl',
  'sslCa',
  'sslCert',
  'sslKey',
  'sslRejectUnauthorized',
  'saslMechanism',
  'saslUsername',
  'saslPassword',
] as const satisfies readonly OptionName[]

export type SecurityConfig = Config<(typeof securityOptions)[number]>

export type SaslMechanism = 'plain' | 'scram-sha-256' | 'scram-sha-512'

/** How to connect, in kafkajs' terms: `ssl` true (system CAs) or TLS options; SASL credentials. */
export interface KafkaSecurity {
  ssl?: boolean | ConnectionOptions
  sasl?: KafkaSasl
}

/** kafkajs' username/password SASL options, one variant per mechanism. */
export type KafkaSasl = {
  [M in SaslMechanism]: { mechanism: M; username: string; password: string }
}[SaslMechanism]

/**
 * Checks the security options together and reads the PEM files. Throws a ConfigError naming the
 * option at fault; never puts a password or a file's content in the message.
 */
export function kafkaSecurity(
  c: SecurityConfig,
  readFile: (file: string) => string = (file) => readFileSync(file, 'utf8'),
): KafkaSecurity {
  const security: KafkaSecurity = {}

  const sasl = {
    saslMechanism: c.saslMechanism,
    saslUsername: c.saslUsername,
    saslPassword: c.saslPassword,
  }
  const given = (Object.keys(sasl) as (keyof typeof sasl)[]).filter((k) => sasl[k] !== undefined)
  if (given.length > 0) {
    const missing = (Object.keys(sasl) as (keyof typeof sasl)[]).find((k) => sasl[k] === undefined)
    if (missing !== undefined) {
      const others = given.map((k) => optionLabel(k)).join(' and ')
      throw new ConfigError(optionLabel(missing), `required with ${others}`)
    }
    security.sasl = {
      mechanism: c.saslMechanism,
      username: c.saslUsername,
      password: c.saslPassword,
    } as KafkaSasl
  }

  const files = { sslCa: c.sslCa, sslCert: c.sslCert, sslKey: c.sslKey }
  if (c.ssl !== true) {
    const stray = (Object.keys(files) as (keyof typeof files)[]).find((k) => files[k] !== undefined)
    if (stray !== undefined) {
      throw new ConfigError(optionLabel(stray), `needs ${optionLabel('ssl')} set to true`)
    }
    return security
  }
  if ((c.sslCert === undefined) !== (c.sslKey === undefined)) {
    const missing = c.sslCert === undefined ? 'sslCert' : 'sslKey'
    const other = missing === 'sslCert' ? 'sslKey' : 'sslCert'
    throw new ConfigError(optionLabel(missing), `required with ${optionLabel(other)} (mutual TLS)`)
  }
  const read = (key: keyof typeof files): string | undefined => {
    const file = files[key]
    if (file === undefined) return undefined
    try {
      return readFile(file)
    } catch (error) {
      const code = (error as { code?: unknown } | null)?.code
      throw new ConfigError(
        optionLabel(key),
        `cannot read "${file}"${typeof code === 'string' ? ` (${code})` : ''}`,
      )
    }
  }
  const ca = read('sslCa')
  const cert = read('sslCert')
  const key = read('sslKey')
  if (ca === undefined && cert === undefined && c.sslRejectUnauthorized) {
    security.ssl = true
    return security
  }
  security.ssl = {
    rejectUnauthorized: c.sslRejectUnauthorized,
    ...(ca !== undefined && { ca: [ca] }),
    ...(cert !== undefined && { cert }),
    ...(key !== undefined && { key }),
  }
  return security
}

const levelName: Record<KafkaLogLevel, 'error' | 'warn' | 'info' | 'debug' | undefined> = {
  [KafkaLogLevel.NOTHING]: undefined,
  [KafkaLogLevel.ERROR]: 'error',
  [KafkaLogLevel.WARN]: 'warn',
  [KafkaLogLevel.INFO]: 'info',
  [KafkaLogLevel.DEBUG]: 'debug',
}

/** A kafkajs client whose logs go through our logger, namespaced `kafkajs.<namespace>`. */
export function createKafka(options: {
  brokers: string[]
  clientId: string
  logger: Logger
  /** TLS and SASL; default plaintext without authentication. */
  security?: KafkaSecurity
}): Kafka {
  const kafkaLogger = options.logger.child({ ns: 'kafkajs' })
  const { ssl, sasl } = options.security ?? {}
  if (sasl?.mechanism === 'plain' && (ssl === undefined || ssl === false)) {
    kafkaLogger.warn('SASL PLAIN without --ssl: the password crosses the network in clear text')
  }
  if (typeof ssl === 'object' && ssl.rejectUnauthorized === false) {
    kafkaLogger.warn(
      '--ssl-reject-unauthorized false: broker certificates are not verified, so anyone on the ' +
        'network path can pose as the broker (and read a SASL password)',
    )
  }
  return new Kafka({
    clientId: options.clientId,
    brokers: options.brokers,
    ...(ssl !== undefined && { ssl }),
    ...(sasl !== undefined && { sasl }),
    // kafkajs logs rebalances at info and errors it will retry at error: keep only warnings up.
    logLevel: KafkaLogLevel.WARN,
    logCreator:
      () =>
      ({ namespace, level, log }: LogEntry) => {
        let name = levelName[level]
        if (name === undefined) return
        const { message, timestamp: _timestamp, logger: _logger, ...extra } = log
        // kafkajs' connection layer logs every error response (a rebalance's heartbeat too) at
        // error level although the layers above handle them; those log real failures themselves.
        if (name === 'error' && namespace === 'Connection') name = 'warn'
        // CONCURRENT_TRANSACTIONS right after a commit (kafkajs#1068): retried, and harmless.
        if (name === 'error' && /concurrent operation on the same transaction/.test(message)) {
          name = 'warn'
        }
        kafkaLogger[name]({ kafkaNs: namespace, ...extra }, message)
      },
  })
}
