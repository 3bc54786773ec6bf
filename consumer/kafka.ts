import { Kafka, logLevel as KafkaLogLevel, type LogEntry } from 'kafkajs'
import type { Logger } from './logger'

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
}): Kafka {
  const kafkaLogger = options.logger.child({ ns: 'kafkajs' })
  return new Kafka({
    clientId: options.clientId,
    brokers: options.brokers,
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
