/**
 * A real single-node Apache Kafka broker (KRaft, broker+controller in one JVM) built from the
 * Maven Central jars: no Docker, no Kafka distribution tarball. Needs `java` (17+) and `mvn`.
 *
 *   npx tsx scripts/local-kafka.ts fetch [--version V]
 *   npx tsx scripts/local-kafka.ts start [--version V] [--port P] [--data-dir D]
 *                                        [--sasl-user NAME:PASSWORD ...] [--sasl-port P]
 *
 * `--sasl-user` (or the `sasl` option) adds a SASL_PLAINTEXT listener accepting SCRAM-SHA-256,
 * SCRAM-SHA-512 and PLAIN for those users; the PLAINTEXT listener stays as it is.
 * Jars are cached in ${KWA_CACHE_DIR:-$HOME/.cache/kafka-window-aggregator}/kafka-<version>/libs.
 * Default version: $KWA_KAFKA_VERSION or 3.9.2; 4.x works too (log4j2 logging, share.* configs).
 */
import { main } from './local-kafka/cli'
import { errorText } from './local-kafka/util'

export { startLocalBroker } from './local-kafka/broker'
export { fetchKafka } from './local-kafka/fetch'
export {
  LOCAL_SASL_MECHANISMS,
  type LocalSaslOptions,
  type LocalSaslUser,
} from './local-kafka/sasl'
export type { LocalBroker, LocalBrokerOptions, ProcessExit } from './local-kafka/types'
export type { LocalTlsFiles, LocalTlsOptions } from './local-kafka/tls'
export { DEFAULT_KAFKA_VERSION, defaultKafkaVersion, kafkaCacheDir } from './local-kafka/versions'

if (typeof require !== 'undefined' && typeof module !== 'undefined' && require.main === module) {
  main(process.argv.slice(2)).catch((error: unknown) => {
    console.error(`local-kafka: ${errorText(error)}`)
    process.exit(1)
  })
}
