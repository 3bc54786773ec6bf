// Public types of the local broker: startLocalBroker options, the returned handle, JVM exit info.
import type { LocalSaslOptions } from './sasl'
import type { LocalTlsFiles, LocalTlsOptions } from './tls'

export interface LocalBrokerOptions {
  /** Kafka version on Maven Central, e.g. 3.9.2 or 4.1.1. Default: $KWA_KAFKA_VERSION or 3.9.2. */
  version?: string
  /** Where config, KRaft data and broker.log live. Default: a new temp dir, deleted by cleanup(). */
  dataDir?: string
  /** Client (PLAINTEXT) port on 127.0.0.1. Default: a free port picked at run time. */
  port?: number
  /** KRaft controller port on 127.0.0.1. Default: a free port picked at run time. */
  controllerPort?: number
  /** Max JVM heap in MiB (default 512). */
  heapMb?: number
  /** Receives every broker log line (broker.log and the JVM's stdout/stderr). */
  onLog?: (line: string) => void
  /** Called when the JVM exits without stop()/kill()/cleanup() having asked for it. */
  onUnexpectedExit?: (exit: ProcessExit) => void
  /** How long to wait for the broker to be ready (default 90 s). */
  readyTimeoutMs?: number
  /**
   * Adds a SASL_PLAINTEXT listener on 127.0.0.1 (the PLAINTEXT one stays, for inter-broker
   * traffic and tools) that accepts SCRAM-SHA-256, SCRAM-SHA-512 and PLAIN for these users. The
   * SCRAM credentials are written when the storage is formatted (`kafka-storage format
   * --add-scram`), so they exist before the broker first starts; PLAIN users live in the JAAS config.
   */
  sasl?: LocalSaslOptions
  /**
   * Adds TLS listeners on 127.0.0.1, with certificates generated at start by openssl (a throwaway
   * CA; the broker's for 127.0.0.1 and localhost) under `<dataDir>/tls`: SSL (server
   * authentication), MTLS (SSL requiring a client certificate signed by the CA) and, with `sasl`,
   * SASL_SSL (SCRAM-SHA-512); and, for failure tests, SSL listeners whose certificate expired
   * in 2020 (EXPIRED) or names only elsewhere.invalid (WRONGHOST).
   */
  tls?: LocalTlsOptions
  /**
   * Enforces ACLs (KRaft's StandardAuthorizer). The PLAINTEXT listener's principal (ANONYMOUS:
   * the harness, inter-broker and controller traffic) is a super user; SASL users may do only
   * what ACLs allow them.
   */
  authorizer?: boolean
}

export interface LocalBroker {
  /** Bootstrap string, "127.0.0.1:PORT" (the PLAINTEXT listener). */
  brokers: string
  /** Bootstrap string of the SASL_PLAINTEXT listener, when `sasl` was given. */
  saslBrokers?: string
  /** With `tls`: the TLS listeners' bootstrap strings and the PEM files clients need. */
  tls?: {
    sslBrokers: string
    mtlsBrokers: string
    /** With `sasl` too. */
    saslSslBrokers?: string
    /** SSL listeners whose certificate expired in 2020, or names only elsewhere.invalid. */
    expiredBrokers: string
    wrongHostBrokers: string
    files: LocalTlsFiles
  }
  version: string
  port: number
  controllerPort: number
  dataDir: string
  logFile: string
  /** SIGTERM, wait for a clean exit (SIGKILL after 30 s). */
  stop(): Promise<void>
  /** SIGKILL (crash tests), wait for exit. */
  kill(): Promise<void>
  /** Start again on the same dataDir and ports (stopping first if running), wait until ready. */
  restart(): Promise<void>
  /** Sends a signal to the running JVM (chaos tests: SIGSTOP/SIGCONT); false when not running. */
  signal(signal: NodeJS.Signals): boolean
  /** The running JVM's process id (chaos tests pin it to a CPU); undefined when not running. */
  pid(): number | undefined
  /** Stop if running and delete the dataDir if startLocalBroker created it. */
  cleanup(): Promise<void>
}

export interface ProcessExit {
  code: number | null
  signal: NodeJS.Signals | null
}
