// Broker config files: data dir layout, server.properties, log4j/log4j2 config, JVM arguments.
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { type LocalSaslUser, saslProperties } from './sasl'
import { type BrokerTls, tlsListeners, tlsProperties } from './tls'
import { isKafka4OrLater } from './versions'

export interface BrokerLayout {
  version: string
  dataDir: string
  port: number
  controllerPort: number
  sasl?: { port: number; users: LocalSaslUser[] }
  tls?: BrokerTls
  authorizer?: boolean
  propertiesFile: string
  loggingConfigFile: string
  logFile: string
  kraftDir: string
}

export function layoutFor(
  version: string,
  dataDir: string,
  port: number,
  controllerPort: number,
  sasl?: { port: number; users: LocalSaslUser[] },
  tls?: BrokerTls,
  authorizer?: boolean,
): BrokerLayout {
  return {
    version,
    dataDir,
    port,
    controllerPort,
    sasl,
    tls,
    authorizer,
    propertiesFile: path.join(dataDir, 'server.properties'),
    loggingConfigFile: path.join(
      dataDir,
      isKafka4OrLater(version) ? 'log4j2.properties' : 'log4j.properties',
    ),
    logFile: path.join(dataDir, 'broker.log'),
    kraftDir: path.join(dataDir, 'kraft-data'),
  }
}

function serverProperties(layout: BrokerLayout): string {
  const { sasl, tls } = layout
  const tlsParts = tls ? tlsListeners(tls) : { listeners: [], protocols: [] }
  const advertised = [
    `PLAINTEXT://127.0.0.1:${layout.port}`,
    ...(sasl ? [`SASL_PLAINTEXT://127.0.0.1:${sasl.port}`] : []),
    ...tlsParts.listeners,
  ]
  const protocols = [
    'CONTROLLER:PLAINTEXT',
    'PLAINTEXT:PLAINTEXT',
    ...(sasl ? ['SASL_PLAINTEXT:SASL_PLAINTEXT'] : []),
    ...tlsParts.protocols,
  ]
  const lines = [
    'process.roles=broker,controller',
    'node.id=1',
    `controller.quorum.voters=1@127.0.0.1:${layout.controllerPort}`,
    `listeners=${[...advertised, `CONTROLLER://127.0.0.1:${layout.controllerPort}`].join(',')}`,
    `advertised.listeners=${advertised.join(',')}`,
    'inter.broker.listener.name=PLAINTEXT',
    'controller.listener.names=CONTROLLER',
    `listener.security.protocol.map=${protocols.join(',')}`,
    ...(sasl ? saslProperties(sasl.users) : []),
    ...(tls ? tlsProperties(tls, propertiesPath) : []),
    ...(layout.authorizer
      ? [
          'authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer',
          // PLAINTEXT (the harness, inter-broker and controller traffic) is unauthenticated.
          'super.users=User:ANONYMOUS',
        ]
      : []),
    `log.dirs=${propertiesPath(layout.kraftDir)}`,
    // Tests create their topics explicitly; a typo must fail rather than create a topic.
    'auto.create.topics.enable=false',
    'num.partitions=1',
    // Single node: internal topics must not ask for more replicas than there are brokers.
    'offsets.topic.replication.factor=1',
    'offsets.topic.num.partitions=1',
    'transaction.state.log.replication.factor=1',
    'transaction.state.log.min.isr=1',
    'transaction.state.log.num.partitions=1',
    // No 3 s wait before the first consumer group rebalance.
    'group.initial.rebalance.delay.ms=0',
    // After kill -9 the restarted broker is refused (DUPLICATE_BROKER_REGISTRATION) until the old
    // incarnation's session expires: 9 s by default, 4 s here. Heartbeat must stay well below it.
    'broker.heartbeat.interval.ms=500',
    'broker.session.timeout.ms=4000',
  ]
  if (isKafka4OrLater(layout.version)) {
    lines.push(
      'share.coordinator.state.topic.replication.factor=1',
      'share.coordinator.state.topic.min.isr=1',
    )
  }
  return `${lines.join('\n')}\n`
}

const LOG_PATTERN = '[%d] %p %m (%c)%n'

/*
 * Logging goes to broker.log only. No console appender: the JVM's stdout/stderr are still captured
 * (for what bypasses the logger: JVM errors, SLF4J warnings), and a console copy of log lines would
 * reach onLog and the error tail twice.
 */

/** log4j 1.x (reload4j) config for Kafka 3.x. */
function log4jProperties(logFile: string): string {
  return [
    'log4j.rootLogger=INFO, file',
    'log4j.appender.file=org.apache.log4j.FileAppender',
    `log4j.appender.file.File=${propertiesPath(logFile)}`,
    'log4j.appender.file.Append=true',
    'log4j.appender.file.layout=org.apache.log4j.PatternLayout',
    `log4j.appender.file.layout.ConversionPattern=${LOG_PATTERN}`,
    'log4j.logger.kafka.request.logger=WARN',
    'log4j.logger.kafka.network.RequestChannel$=WARN',
    '',
  ].join('\n')
}

/** log4j2 (Kafka 4.x) config, properties syntax so no YAML/XML parser is involved. */
function log4j2Properties(logFile: string): string {
  return [
    'status = warn',
    // log4j2's own shutdown hook would stop logging before Kafka's shutdown hook has finished.
    'shutdownHook = disable',
    'appender.file.type = File',
    'appender.file.name = FILE',
    `appender.file.fileName = ${propertiesPath(logFile)}`,
    'appender.file.append = true',
    'appender.file.layout.type = PatternLayout',
    `appender.file.layout.pattern = ${LOG_PATTERN}`,
    'rootLogger.level = info',
    'rootLogger.appenderRef.file.ref = FILE',
    'logger.request.name = kafka.request.logger',
    'logger.request.level = warn',
    'logger.requestChannel.name = kafka.network.RequestChannel$',
    'logger.requestChannel.level = warn',
    '',
  ].join('\n')
}

/** Backslashes are escapes in .properties files. */
function propertiesPath(p: string): string {
  return p.split(path.sep).join('/')
}

export async function writeBrokerConfig(layout: BrokerLayout): Promise<void> {
  await fs.mkdir(layout.kraftDir, { recursive: true })
  await fs.writeFile(layout.propertiesFile, serverProperties(layout))
  const logging = isKafka4OrLater(layout.version)
    ? log4j2Properties(layout.logFile)
    : log4jProperties(layout.logFile)
  await fs.writeFile(layout.loggingConfigFile, logging)
}

function loggingJvmFlag(layout: BrokerLayout): string {
  return isKafka4OrLater(layout.version)
    ? `-Dlog4j2.configurationFile=${layout.loggingConfigFile}`
    : `-Dlog4j.configuration=file:${propertiesPath(layout.loggingConfigFile)}`
}

export function jvmArgs(layout: BrokerLayout, libsDir: string, heapMb: number): string[] {
  return [
    `-Xms${Math.min(256, heapMb)}m`,
    `-Xmx${heapMb}m`,
    '-XX:+UseSerialGC',
    '-Djava.awt.headless=true',
    `-Dkafka.logs.dir=${layout.dataDir}`,
    loggingJvmFlag(layout),
    '-cp',
    path.join(libsDir, '*'), // Java expands the wildcard itself; no shell involved.
  ]
}
