// The harness's own kafkajs clients (quiet, patient through a broker restart), admin and LSOs.
import { Kafka, logLevel, type Admin } from 'kafkajs'

/** kafkajs clients of the harness itself: quiet, and patient enough to ride a broker restart. */
export function harnessKafka(brokers: string, clientId: string): Kafka {
  return new Kafka({
    clientId,
    brokers: [brokers],
    logLevel: logLevel.NOTHING,
    connectionTimeout: 3_000,
    requestTimeout: 10_000,
    retry: { retries: 3, initialRetryTime: 200, maxRetryTime: 2_000 },
  })
}

export async function withAdmin<T>(brokers: string, use: (admin: Admin) => Promise<T>): Promise<T> {
  const admin = harnessKafka(brokers, 'kwa-chaos-admin').admin()
  await admin.connect()
  try {
    return await use(admin)
  } finally {
    await admin.disconnect()
  }
}

/** The last stable offset per partition: kafkajs' ListOffsets defaults to READ_COMMITTED. */
export async function lastStableOffsets(
  brokers: string,
  topic: string,
): Promise<Map<number, bigint>> {
  return withAdmin(brokers, async (admin) => {
    const offsets = await admin.fetchTopicOffsets(topic)
    return new Map(offsets.map((o) => [o.partition, BigInt(o.high)]))
  })
}
