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
import { type ChildProcess, execFile, spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { promises as fs } from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { parseArgs } from 'node:util'
import { Kafka, logLevel } from 'kafkajs'

export const DEFAULT_KAFKA_VERSION = '3.9.2'

const READY_TIMEOUT_MS = 90_000
const STOP_TIMEOUT_MS = 30_000
const FETCH_LOCK_TIMEOUT_MS = 10 * 60_000
const DEFAULT_HEAP_MB = 512
const LOG_TAIL_LINES = 40
const READY_LINE = /Kafka\s*Server.*started/
const POM_TEMPLATE = path.join(__dirname, 'kafka', 'pom.xml')

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
}

export interface LocalSaslOptions {
  /** At least one. Names and passwords: letters, digits and `._-` only (they go into configs). */
  users: LocalSaslUser[]
  /** Port of the SASL_PLAINTEXT listener. Default: a free port picked at run time. */
  port?: number
}

export interface LocalSaslUser {
  username: string
  password: string
}

/** Mechanisms the SASL_PLAINTEXT listener enables (kafkajs names them in lower case). */
export const LOCAL_SASL_MECHANISMS = ['SCRAM-SHA-256', 'SCRAM-SHA-512', 'PLAIN'] as const

export interface LocalBroker {
  /** Bootstrap string, "127.0.0.1:PORT" (the PLAINTEXT listener). */
  brokers: string
  /** Bootstrap string of the SASL_PLAINTEXT listener, when `sasl` was given. */
  saslBrokers?: string
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

// ---------------------------------------------------------------------------------------------
// Versions and paths
// ---------------------------------------------------------------------------------------------

export function defaultKafkaVersion(): string {
  const fromEnv = process.env['KWA_KAFKA_VERSION']?.trim()
  return fromEnv ? fromEnv : DEFAULT_KAFKA_VERSION
}

export function kafkaCacheDir(): string {
  const fromEnv = process.env['KWA_CACHE_DIR']?.trim()
  return fromEnv ? fromEnv : path.join(os.homedir(), '.cache', 'kafka-window-aggregator')
}

/** The version ends up in paths and Maven arguments, so only accept plain version strings. */
function assertVersion(version: string): void {
  if (!/^\d+\.\d+\.\d+([.-][0-9A-Za-z.-]+)?$/.test(version)) {
    throw new Error(`Not a Kafka version: "${version}" (expected e.g. 3.9.2 or 4.1.1)`)
  }
}

function majorOf(version: string): number {
  return Number.parseInt(version.split('.')[0] ?? '0', 10)
}

/** Kafka 4 moved to log4j2 and added share groups; 3.x uses log4j 1 (reload4j here). */
function isKafka4OrLater(version: string): boolean {
  return majorOf(version) >= 4
}

function libsDirOf(version: string): string {
  return path.join(kafkaCacheDir(), `kafka-${version}`, 'libs')
}

// ---------------------------------------------------------------------------------------------
// fetchKafka: Maven -> temp dir -> atomic rename into the cache, under a lock file
// ---------------------------------------------------------------------------------------------

/** Ensures the broker jars of `version` are cached; returns the libs dir (for `-cp '<libs>/*'`). */
export async function fetchKafka(version: string = defaultKafkaVersion()): Promise<string> {
  assertVersion(version)
  const libsDir = libsDirOf(version)
  if (await isCompleteInstall(libsDir, version)) return libsDir

  const cacheDir = kafkaCacheDir()
  await fs.mkdir(cacheDir, { recursive: true })
  const lockFile = path.join(cacheDir, `kafka-${version}.lock`)
  const releaseLock = await acquireLock(lockFile, () => isCompleteInstall(libsDir, version))
  if (releaseLock === 'already-done') return libsDir
  try {
    // Another process may have finished while we waited for the lock.
    if (await isCompleteInstall(libsDir, version)) return libsDir
    await removeStalePartials(cacheDir, version)
    await downloadIntoCache(version, cacheDir, path.dirname(libsDir))
    return libsDir
  } finally {
    await releaseLock()
  }
}

/** An install dir only ever appears by rename of a finished download, so the jar marks it complete. */
async function isCompleteInstall(libsDir: string, version: string): Promise<boolean> {
  return pathExists(path.join(libsDir, `kafka_2.13-${version}.jar`))
}

async function downloadIntoCache(
  version: string,
  cacheDir: string,
  installDir: string,
): Promise<void> {
  // Same filesystem as installDir, so the final rename is atomic.
  const staging = await fs.mkdtemp(path.join(cacheDir, `.kafka-${version}.partial-`))
  try {
    const pom = path.join(staging, 'pom.xml')
    await fs.copyFile(POM_TEMPLATE, pom)
    const stagingLibs = path.join(staging, 'libs')
    await runMaven(pom, version, stagingLibs)
    await alignLog4jBinding(pom, version, stagingLibs)
    if (!(await isCompleteInstall(stagingLibs, version))) {
      throw new Error(`Maven finished but kafka_2.13-${version}.jar is missing in ${stagingLibs}`)
    }
    await fs.rm(path.join(staging, 'target'), { recursive: true, force: true })
    await renameUnlessPresent(staging, installDir)
  } finally {
    // Gone after a successful rename; must not mask the original error otherwise.
    await fs.rm(staging, { recursive: true, force: true }).catch(() => undefined)
  }
}

/**
 * Kafka 4.x: the slf4j->log4j2 binding should have the same version as the log4j-api/core that
 * kafka-server brings (2.24.3 in 4.0/4.1, 2.25.x in 4.2). Refetch the binding if they differ.
 */
async function alignLog4jBinding(pom: string, version: string, libsDir: string): Promise<void> {
  if (!isKafka4OrLater(version)) return
  const jars = await fs.readdir(libsDir)
  const apiVersion = jarVersion(jars, 'log4j-api')
  const bindingVersion = jarVersion(jars, 'log4j-slf4j-impl')
  if (!apiVersion || apiVersion === bindingVersion) return
  await fs.rm(libsDir, { recursive: true, force: true })
  await runMaven(pom, version, libsDir, [`-Dlog4j2.version=${apiVersion}`])
}

function jarVersion(jarNames: string[], artifactId: string): string | undefined {
  const pattern = new RegExp(`^${artifactId}-(\\d[^-]*)\\.jar$`)
  for (const name of jarNames) {
    const match = pattern.exec(name)
    if (match?.[1]) return match[1]
  }
  return undefined
}

async function runMaven(
  pom: string,
  version: string,
  outputDir: string,
  extraArgs: string[] = [],
): Promise<void> {
  const args = [
    ...extraArgs,
    '-q',
    '-B',
    '-Dstyle.color=never',
    '-f',
    pom,
    'dependency:copy-dependencies',
    '-DincludeScope=runtime',
    `-Dkafka.version=${version}`,
    `-Dkafka.logging=${isKafka4OrLater(version) ? 'log4j2' : 'reload4j'}`,
    `-DoutputDirectory=${outputDir}`,
  ]
  try {
    // Tied to our lifetime: an orphaned Maven would keep writing into a partial dir.
    const [command, commandArgs] = await diesWithParent('mvn', args)
    await execFileText(command, commandArgs, {
      cwd: path.dirname(pom),
      timeoutMs: FETCH_LOCK_TIMEOUT_MS,
    })
  } catch (error) {
    throw new Error(
      `Could not fetch org.apache.kafka:kafka_2.13:${version} with Maven (is mvn on PATH and ` +
        `Maven Central reachable?)\n${errorText(error)}`,
    )
  }
}

/** Rename-wins: if a concurrent fetch already put a complete install in place, keep theirs. */
async function renameUnlessPresent(from: string, to: string): Promise<void> {
  try {
    await fs.rename(from, to)
  } catch (error) {
    const code = errorCode(error)
    if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw error
  }
}

/**
 * Leftovers of interrupted fetches. Best effort: an orphaned Maven (where setpriv is missing) may
 * still be writing one; a leftover costs disk space only, as every fetch uses its own temp dir.
 */
async function removeStalePartials(cacheDir: string, version: string): Promise<void> {
  const prefix = `.kafka-${version}.partial-`
  for (const entry of await fs.readdir(cacheDir)) {
    if (!entry.startsWith(prefix)) continue
    await fs.rm(path.join(cacheDir, entry), { recursive: true, force: true }).catch(() => undefined)
  }
}

type ReleaseLock = () => Promise<void>

/**
 * Exclusive-create lock file holding our pid. A lock whose pid is gone (crashed fetch) is taken over.
 * Returns 'already-done' if another process completed the work while we waited.
 */
async function acquireLock(
  lockFile: string,
  isDone: () => Promise<boolean>,
): Promise<ReleaseLock | 'already-done'> {
  const token = `${process.pid} ${randomBytes(6).toString('hex')}`
  const deadline = Date.now() + FETCH_LOCK_TIMEOUT_MS
  for (;;) {
    try {
      await fs.writeFile(lockFile, token, { flag: 'wx' })
      return () => releaseLockFile(lockFile, token)
    } catch (error) {
      if (errorCode(error) !== 'EEXIST') throw error
    }
    if (await isDone()) return 'already-done'
    const staleToken = await staleLockToken(lockFile)
    if (staleToken !== undefined) {
      // Only remove what we judged stale: a waiter that took over first has a new token by now.
      await releaseLockFile(lockFile, staleToken)
      continue
    }
    if (Date.now() > deadline) throw new Error(`Timed out waiting for the fetch lock ${lockFile}`)
    await sleep(500)
  }
}

async function releaseLockFile(lockFile: string, token: string): Promise<void> {
  const current = await fs.readFile(lockFile, 'utf8').catch(() => '')
  if (current === token) await fs.rm(lockFile, { force: true })
}

/** The lock's content if its owner is gone (or it is older than any fetch may take), else undefined. */
async function staleLockToken(lockFile: string): Promise<string | undefined> {
  const content = await fs.readFile(lockFile, 'utf8').catch(() => null)
  if (content === null) return undefined // just released: retry the create
  const ageMs = await fileAgeMs(lockFile)
  const pid = Number.parseInt(content.split(' ')[0] ?? '', 10)
  // Empty: a writer between create and write, unless old. Old: the pid may have been reused.
  const hasLiveOwner = Number.isInteger(pid) && pid > 0 ? isProcessAlive(pid) : ageMs < 10_000
  return hasLiveOwner && ageMs < FETCH_LOCK_TIMEOUT_MS ? undefined : content
}

// ---------------------------------------------------------------------------------------------
// Broker config files
// ---------------------------------------------------------------------------------------------

interface BrokerLayout {
  version: string
  dataDir: string
  port: number
  controllerPort: number
  sasl?: { port: number; users: LocalSaslUser[] }
  propertiesFile: string
  loggingConfigFile: string
  logFile: string
  kraftDir: string
}

function layoutFor(
  version: string,
  dataDir: string,
  port: number,
  controllerPort: number,
  sasl?: { port: number; users: LocalSaslUser[] },
): BrokerLayout {
  return {
    version,
    dataDir,
    port,
    controllerPort,
    sasl,
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
  const sasl = layout.sasl
  const saslListener = sasl ? `,SASL_PLAINTEXT://127.0.0.1:${sasl.port}` : ''
  const lines = [
    'process.roles=broker,controller',
    'node.id=1',
    `controller.quorum.voters=1@127.0.0.1:${layout.controllerPort}`,
    `listeners=PLAINTEXT://127.0.0.1:${layout.port}${saslListener},CONTROLLER://127.0.0.1:${layout.controllerPort}`,
    `advertised.listeners=PLAINTEXT://127.0.0.1:${layout.port}${saslListener}`,
    'inter.broker.listener.name=PLAINTEXT',
    'controller.listener.names=CONTROLLER',
    `listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT${sasl ? ',SASL_PLAINTEXT:SASL_PLAINTEXT' : ''}`,
    ...(sasl ? saslProperties(sasl.users) : []),
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

/**
 * SASL on the SASL_PLAINTEXT listener only: no authorizer, so an authenticated user may do
 * anything. SCRAM users are in the cluster metadata (formatted in, see formatStorage); PLAIN
 * users are `user_<name>="<password>"` entries of the listener's PlainLoginModule.
 */
function saslProperties(users: LocalSaslUser[]): string[] {
  const plainUsers = users.map((u) => ` user_${u.username}="${u.password}"`).join('')
  return [
    `sasl.enabled.mechanisms=${LOCAL_SASL_MECHANISMS.join(',')}`,
    'listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=' +
      'org.apache.kafka.common.security.scram.ScramLoginModule required;',
    'listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=' +
      'org.apache.kafka.common.security.scram.ScramLoginModule required;',
    'listener.name.sasl_plaintext.plain.sasl.jaas.config=' +
      `org.apache.kafka.common.security.plain.PlainLoginModule required${plainUsers};`,
  ]
}

/** Values end up in .properties, JAAS and `--add-scram` syntax: keep them plain. */
function assertSaslUsers(users: LocalSaslUser[]): void {
  if (users.length === 0) throw new Error('sasl.users: at least one user is needed')
  for (const { username, password } of users) {
    if (!/^[A-Za-z0-9._-]+$/.test(username) || !/^[A-Za-z0-9._-]+$/.test(password)) {
      throw new Error(
        `sasl.users: "${username}": names and passwords may only hold letters, digits and ._-`,
      )
    }
  }
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

async function writeBrokerConfig(layout: BrokerLayout): Promise<void> {
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

function jvmArgs(layout: BrokerLayout, libsDir: string, heapMb: number): string[] {
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

/** A Kafka cluster id is 16 random bytes, base64url without padding; Kafka avoids a leading '-'. */
function randomClusterId(): string {
  for (;;) {
    const id = randomBytes(16).toString('base64url')
    if (!id.startsWith('-')) return id
  }
}

/** The cluster id a previous format wrote, if this data dir was formatted before. */
async function existingClusterId(layout: BrokerLayout): Promise<string | undefined> {
  const meta = await fs
    .readFile(path.join(layout.kraftDir, 'meta.properties'), 'utf8')
    .catch(() => '')
  return /^cluster\.id=(.+)$/m.exec(meta)?.[1]?.trim()
}

/**
 * `-g` (--ignore-formatted) skips a data dir that is already formatted, but only if the cluster id
 * matches the one in its meta.properties (a fresh random id fails), so reuse that id.
 */
async function formatStorage(layout: BrokerLayout, libsDir: string): Promise<void> {
  const clusterId = (await existingClusterId(layout)) ?? randomClusterId()
  // SCRAM credentials go into the bootstrap metadata (KIP-900), so the first start has them.
  // A dir formatted before is skipped (-g), users and all: reuse a data dir with the same users.
  // (The passwords are on the format command line for a moment: fine for a local test broker.)
  const scram = (layout.sasl?.users ?? []).flatMap(({ username, password }) =>
    ['SCRAM-SHA-256', 'SCRAM-SHA-512'].flatMap((mechanism) => [
      '--add-scram',
      `${mechanism}=[name=${username},password=${password}]`,
    ]),
  )
  const args = [
    ...jvmArgs(layout, libsDir, 256),
    'kafka.tools.StorageTool',
    'format',
    '-t',
    clusterId,
    '-c',
    layout.propertiesFile,
    '-g',
    ...scram,
  ]
  try {
    const [command, commandArgs] = await diesWithParent(javaBinary(), args)
    await execFileText(command, commandArgs, { cwd: layout.dataDir, timeoutMs: 60_000 })
  } catch (error) {
    // The command line is in the message: keep the SCRAM passwords out of it.
    const text = errorText(error).replace(/password=[^\]\s]*/g, 'password=***')
    throw new Error(`Formatting Kafka storage in ${layout.kraftDir} failed:\n${text}`)
  }
}

function javaBinary(): string {
  const javaHome = process.env['JAVA_HOME']
  return javaHome ? path.join(javaHome, 'bin', 'java') : 'java'
}

// ---------------------------------------------------------------------------------------------
// The JVM must not outlive this Node process
// ---------------------------------------------------------------------------------------------

const liveJvms = new Set<ChildProcess>()
let exitHooksInstalled = false
const FORWARDED_SIGNALS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP']

function killLiveJvmsNow(): void {
  for (const child of liveJvms) child.kill('SIGKILL')
  liveJvms.clear()
}

function onTerminatingSignal(signal: NodeJS.Signals): void {
  // If someone else handles the signal (a CLI doing a graceful stop, a test runner), let them;
  // the 'exit' hook still kills whatever is left. Otherwise behave like the default handler would.
  if (process.listenerCount(signal) > 1) return
  killLiveJvmsNow()
  for (const s of FORWARDED_SIGNALS) process.removeListener(s, onTerminatingSignal)
  process.kill(process.pid, signal)
}

function installExitHooks(): void {
  if (exitHooksInstalled) return
  exitHooksInstalled = true
  process.on('exit', killLiveJvmsNow)
  for (const signal of FORWARDED_SIGNALS) process.on(signal, onTerminatingSignal)
}

let pdeathsigSupport: Promise<boolean> | undefined

/**
 * Linux only: `setpriv --pdeathsig KILL` makes the kernel kill the JVM even if Node itself is
 * SIGKILLed (no exit hook runs then). The signal fires when the spawning *thread* ends, so a broker
 * started inside a worker thread dies with that thread.
 */
function canUsePdeathsig(): Promise<boolean> {
  pdeathsigSupport ??=
    process.platform !== 'linux'
      ? Promise.resolve(false)
      : execFileText('setpriv', ['--pdeathsig', 'KILL', 'true'], { timeoutMs: 5_000 }).then(
          () => true,
          () => false,
        )
  return pdeathsigSupport
}

/**
 * Wraps a command so the kernel kills it when we die, where setpriv can (a shell script that
 * `exec`s, like mvn, keeps the setting). Elsewhere the command runs as is.
 */
async function diesWithParent(command: string, args: string[]): Promise<[string, string[]]> {
  return (await canUsePdeathsig())
    ? ['setpriv', ['--pdeathsig', 'KILL', command, ...args]]
    : [command, args]
}

async function spawnJvm(args: string[], cwd: string): Promise<ChildProcess> {
  const [command, commandArgs] = await diesWithParent(javaBinary(), args)
  installExitHooks()
  const child = spawn(command, commandArgs, {
    cwd,
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: false,
  })
  liveJvms.add(child)
  child.once('exit', () => liveJvms.delete(child))
  // A spawn failure (e.g. ENOENT) is reported as 'error'; without a listener it would crash Node.
  child.once('error', () => liveJvms.delete(child))
  return child
}

// ---------------------------------------------------------------------------------------------
// Log lines: broker.log (tailed by polling) + the JVM's stdout/stderr
// ---------------------------------------------------------------------------------------------

class LineSplitter {
  private partial = ''
  constructor(private readonly onLine: (line: string) => void) {}
  push(chunk: string): void {
    const parts = (this.partial + chunk).split('\n')
    this.partial = parts.pop() ?? ''
    for (const line of parts) this.onLine(line.replace(/\r$/, ''))
  }
}

/** Reads lines appended to a file since a given offset; polling keeps it portable and simple. */
class FileTail {
  private readonly splitter: LineSplitter
  private timer: NodeJS.Timeout | undefined
  private reading = false

  constructor(
    private readonly file: string,
    private offset: number,
    onLine: (line: string) => void,
  ) {
    this.splitter = new LineSplitter(onLine)
  }

  start(intervalMs = 200): void {
    this.timer = setInterval(() => void this.poll(), intervalMs)
    this.timer.unref()
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer)
    this.timer = undefined
  }

  async poll(): Promise<void> {
    if (this.reading) return
    this.reading = true
    try {
      const handle = await fs.open(this.file, 'r').catch(() => null)
      if (!handle) return
      try {
        const { size } = await handle.stat()
        if (size <= this.offset) return
        const buffer = Buffer.alloc(size - this.offset)
        const { bytesRead } = await handle.read(buffer, 0, buffer.length, this.offset)
        this.offset += bytesRead
        this.splitter.push(buffer.subarray(0, bytesRead).toString('utf8'))
      } finally {
        await handle.close()
      }
    } finally {
      this.reading = false
    }
  }
}

class RecentLines {
  private readonly lines: string[] = []
  constructor(private readonly capacity: number) {}
  add(line: string): void {
    this.lines.push(line)
    if (this.lines.length > this.capacity) this.lines.shift()
  }
  text(): string {
    return this.lines.join('\n')
  }
}

// ---------------------------------------------------------------------------------------------
// startLocalBroker
// ---------------------------------------------------------------------------------------------

/** Starts a single-node KRaft broker on 127.0.0.1 and resolves once it answers metadata requests. */
export async function startLocalBroker(options: LocalBrokerOptions = {}): Promise<LocalBroker> {
  const version = options.version ?? defaultKafkaVersion()
  const libsDir = await fetchKafka(version)
  const ownsDataDir = options.dataDir === undefined
  const dataDir = options.dataDir
    ? path.resolve(options.dataDir)
    : await fs.mkdtemp(path.join(os.tmpdir(), 'kwa-kafka-'))
  await fs.mkdir(dataDir, { recursive: true })

  const port = options.port ?? (await freePort())
  const controllerPort = options.controllerPort ?? (await freePort([port]))
  let sasl: BrokerLayout['sasl']
  if (options.sasl !== undefined) {
    assertSaslUsers(options.sasl.users)
    const saslPort = options.sasl.port ?? (await freePort([port, controllerPort]))
    sasl = { port: saslPort, users: options.sasl.users }
  }
  const layout = layoutFor(version, dataDir, port, controllerPort, sasl)
  const runner = new BrokerProcess(layout, libsDir, options)
  try {
    await writeBrokerConfig(layout)
    await formatStorage(layout, libsDir)
    await runner.start()
  } catch (error) {
    if (ownsDataDir) await fs.rm(dataDir, { recursive: true, force: true })
    throw error
  }
  return {
    brokers: `127.0.0.1:${port}`,
    saslBrokers: sasl ? `127.0.0.1:${sasl.port}` : undefined,
    version,
    port,
    controllerPort,
    dataDir,
    logFile: layout.logFile,
    stop: () => runner.stop(),
    kill: () => runner.kill(),
    signal: (signal) => runner.signal(signal),
    pid: () => runner.pid(),
    restart: async () => {
      await runner.stop()
      await runner.start()
    },
    cleanup: async () => {
      await runner.stop()
      if (ownsDataDir) await fs.rm(dataDir, { recursive: true, force: true })
    },
  }
}

/** One JVM at a time for a given layout; start() can be called again after stop()/kill(). */
class BrokerProcess {
  private child: ChildProcess | undefined
  private expectingExit = false
  /** Set once ready: an exit before that is reported by start() itself, not onUnexpectedExit. */
  private ready = false
  private tail: FileTail | undefined
  private readonly recent = new RecentLines(LOG_TAIL_LINES)

  constructor(
    private readonly layout: BrokerLayout,
    private readonly libsDir: string,
    private readonly options: LocalBrokerOptions,
  ) {}

  async start(): Promise<void> {
    if (this.isRunning()) return
    const readyLine = new Deferred<void>()
    const logOffset = await fileSize(this.layout.logFile) // restarts append: ignore older lines
    this.tail = new FileTail(this.layout.logFile, logOffset, (line) => {
      this.handleLine(line)
      if (READY_LINE.test(line)) readyLine.resolve()
    })
    this.tail.start()

    const heapMb = this.options.heapMb ?? DEFAULT_HEAP_MB
    const args = [
      ...jvmArgs(this.layout, this.libsDir, heapMb),
      'kafka.Kafka',
      this.layout.propertiesFile,
    ]
    const child = await spawnJvm(args, this.layout.dataDir)
    this.child = child
    this.expectingExit = false
    this.ready = false
    this.pipeOutput(child)
    const exited = waitForExit(child)
    child.once('error', (error) =>
      readyLine.reject(new Error(`Could not start java: ${error.message}`)),
    )
    void exited.then((exit) => this.onExit(child, exit, readyLine))

    try {
      await withTimeout(
        readyLine.promise,
        this.options.readyTimeoutMs ?? READY_TIMEOUT_MS,
        'readiness',
      )
      await assertAnswersMetadata(`127.0.0.1:${this.layout.port}`)
    } catch (error) {
      await this.kill()
      throw new Error(
        `Kafka ${this.layout.version} broker on 127.0.0.1:${this.layout.port} did not become ready: ` +
          `${errorText(error)}\n--- broker log tail (${this.layout.logFile}) ---\n${await this.logTail()}`,
      )
    }
    this.ready = true
    if (!this.options.onLog) this.stopTail() // keep polling only if someone listens
  }

  async stop(): Promise<void> {
    await this.terminate('SIGTERM', STOP_TIMEOUT_MS)
  }

  async kill(): Promise<void> {
    await this.terminate('SIGKILL', STOP_TIMEOUT_MS)
  }

  pid(): number | undefined {
    return this.isRunning() ? this.child?.pid : undefined
  }

  signal(signal: NodeJS.Signals): boolean {
    if (!this.isRunning()) return false
    return this.child?.kill(signal) ?? false
  }

  private async terminate(signal: NodeJS.Signals, timeoutMs: number): Promise<void> {
    const child = this.child
    if (!child || !this.isRunning()) return
    this.expectingExit = true
    child.kill('SIGCONT') // a SIGSTOPped JVM would not handle SIGTERM
    child.kill(signal)
    const exited = await withTimeout(waitForExit(child), timeoutMs, `exit after ${signal}`).then(
      () => true,
      () => false,
    )
    if (!exited) {
      child.kill('SIGKILL')
      await withTimeout(waitForExit(child), 10_000, 'exit after SIGKILL').catch(() => undefined)
    }
    await this.tail?.poll() // deliver the shutdown lines to onLog
    this.stopTail()
  }

  private isRunning(): boolean {
    const child = this.child
    // No pid: spawn itself failed (e.g. java not found), there is nothing to stop.
    return child?.pid !== undefined && child.exitCode === null && child.signalCode === null
  }

  private onExit(child: ChildProcess, exit: ProcessExit, readyLine: Deferred<void>): void {
    readyLine.reject(new Error(`the JVM exited early (code ${exit.code}, signal ${exit.signal})`))
    if (this.child !== child || this.expectingExit || !this.ready) return
    this.stopTail()
    this.options.onUnexpectedExit?.(exit)
  }

  private pipeOutput(child: ChildProcess): void {
    for (const stream of [child.stdout, child.stderr]) {
      if (!stream) continue
      const splitter = new LineSplitter((line) => this.handleLine(line))
      stream.setEncoding('utf8')
      stream.on('data', (chunk: string) => splitter.push(chunk))
    }
  }

  private handleLine(line: string): void {
    this.recent.add(line)
    this.options.onLog?.(line)
  }

  private stopTail(): void {
    this.tail?.stop()
    this.tail = undefined
  }

  private async logTail(): Promise<string> {
    await this.tail?.poll()
    return this.recent.text() || '(empty)'
  }
}

/** The log line says the server started; a metadata round trip proves the advertised listener works. */
async function assertAnswersMetadata(brokers: string): Promise<void> {
  const kafka = new Kafka({
    clientId: 'local-kafka-readiness',
    brokers: [brokers],
    logLevel: logLevel.NOTHING,
    connectionTimeout: 3_000,
    retry: { retries: 5, initialRetryTime: 200 },
  })
  const admin = kafka.admin()
  try {
    await admin.connect()
    await admin.describeCluster()
  } finally {
    await admin.disconnect()
  }
}

// ---------------------------------------------------------------------------------------------
// Small utilities
// ---------------------------------------------------------------------------------------------

class Deferred<T> {
  readonly promise: Promise<T>
  resolve!: (value: T) => void
  reject!: (error: Error) => void
  constructor() {
    this.promise = new Promise<T>((resolve, reject) => {
      this.resolve = resolve
      this.reject = reject
    })
    this.promise.catch(() => undefined) // a late rejection nobody awaits is not an error
  }
}

function waitForExit(child: ChildProcess): Promise<ProcessExit> {
  if (child.exitCode !== null || child.signalCode !== null) {
    return Promise.resolve({ code: child.exitCode, signal: child.signalCode })
  }
  return new Promise((resolve) => {
    child.once('exit', (code, signal) => resolve({ code, signal }))
  })
}

function withTimeout<T>(promise: Promise<T>, timeoutMs: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)),
      timeoutMs,
    )
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

/** Ask the OS for a free port on 127.0.0.1 (there is a small window before Kafka binds it). */
async function freePort(exclude: number[] = []): Promise<number> {
  for (;;) {
    const port = await new Promise<number>((resolve, reject) => {
      const server = net.createServer()
      server.unref()
      server.once('error', reject)
      server.listen(0, '127.0.0.1', () => {
        const address = server.address()
        const found = typeof address === 'object' && address ? address.port : 0
        server.close(() => resolve(found))
      })
    })
    if (port > 0 && !exclude.includes(port)) return port
  }
}

interface ExecOptions {
  cwd?: string
  timeoutMs: number
}

function execFileText(command: string, args: string[], options: ExecOptions): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(
      command,
      args,
      {
        cwd: options.cwd,
        timeout: options.timeoutMs,
        maxBuffer: 32 * 1024 * 1024,
        encoding: 'utf8',
      },
      (error, stdout, stderr) => {
        if (error)
          reject(
            new Error(`${command} failed: ${error.message}\n${lastLines(`${stdout}\n${stderr}`)}`),
          )
        else resolve(stdout)
      },
    )
  })
}

function lastLines(text: string, count = LOG_TAIL_LINES): string {
  return text.trim().split('\n').slice(-count).join('\n')
}

async function pathExists(p: string): Promise<boolean> {
  return fs.access(p).then(
    () => true,
    () => false,
  )
}

async function fileSize(p: string): Promise<number> {
  return fs.stat(p).then(
    (s) => s.size,
    () => 0,
  )
}

async function fileAgeMs(p: string): Promise<number> {
  return fs.stat(p).then(
    (s) => Date.now() - s.mtimeMs,
    () => 0,
  )
}

function isProcessAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return errorCode(error) === 'EPERM' // exists, owned by someone else
  }
}

function errorCode(error: unknown): string | undefined {
  if (typeof error === 'object' && error !== null && 'code' in error) {
    const code: unknown = error.code
    return typeof code === 'string' ? code : undefined
  }
  return undefined
}

function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error)
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

// ---------------------------------------------------------------------------------------------
// CLI
// ---------------------------------------------------------------------------------------------

const USAGE = `Usage:
  npx tsx scripts/local-kafka.ts fetch [--version V]
  npx tsx scripts/local-kafka.ts start [--version V] [--port P] [--data-dir D]
                                       [--sasl-user NAME:PASSWORD ...] [--sasl-port P]`

async function main(argv: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      version: { type: 'string' },
      port: { type: 'string' },
      'data-dir': { type: 'string' },
      'sasl-user': { type: 'string', multiple: true },
      'sasl-port': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  })
  const command = positionals[0]
  if (values.help || positionals.length !== 1 || (command !== 'fetch' && command !== 'start')) {
    console.error(USAGE)
    process.exitCode = values.help ? 0 : 2
    return
  }
  const version = values.version ?? defaultKafkaVersion()
  if (command === 'fetch') {
    console.log(await fetchKafka(version))
    return
  }
  const saslUsers = values['sasl-user']?.map(parseSaslUser)
  const sasl =
    saslUsers === undefined
      ? undefined
      : { users: saslUsers, port: parsePort(values['sasl-port'], '--sasl-port') }
  await runStartCommand(version, parsePort(values.port), values['data-dir'], sasl)
}

function parsePort(value: string | undefined, flag = '--port'): number | undefined {
  if (value === undefined) return undefined
  const port = Number(value)
  if (!Number.isInteger(port) || port < 1 || port > 65535)
    throw new Error(`Invalid ${flag}: ${value}`)
  return port
}

function parseSaslUser(value: string): LocalSaslUser {
  const colon = value.indexOf(':')
  if (colon <= 0) throw new Error('Invalid --sasl-user: expected NAME:PASSWORD')
  return { username: value.slice(0, colon), password: value.slice(colon + 1) }
}

async function runStartCommand(
  version: string,
  port: number | undefined,
  dataDir: string | undefined,
  sasl: LocalSaslOptions | undefined,
): Promise<void> {
  const startedAt = Date.now()
  let stopping = false
  const broker = await startLocalBroker({
    version,
    port,
    dataDir,
    sasl,
    onUnexpectedExit: (exit) => {
      if (stopping) return // Ctrl-C reaches the JVM too (same process group)
      console.error(
        `local-kafka: broker exited unexpectedly (code ${exit.code}, signal ${exit.signal})`,
      )
      process.exit(1)
    },
  })
  console.error(
    `local-kafka: Kafka ${version} ready in ${((Date.now() - startedAt) / 1000).toFixed(1)} s ` +
      `(data dir ${broker.dataDir}, log ${broker.logFile})`,
  )
  console.log(`KAFKA_BROKERS=${broker.brokers}`)
  if (broker.saslBrokers !== undefined) {
    console.log(`KAFKA_SASL_BROKERS=${broker.saslBrokers}`)
    console.error(
      `local-kafka: SASL_PLAINTEXT on ${broker.saslBrokers} (${LOCAL_SASL_MECHANISMS.join(', ')}) ` +
        `for ${sasl?.users.map((u) => u.username).join(', ')}`,
    )
  }

  const shutdown = (signal: NodeJS.Signals): void => {
    if (stopping) return
    stopping = true
    console.error(`local-kafka: ${signal}, stopping the broker`)
    broker.cleanup().then(
      () => process.exit(0),
      (error: unknown) => {
        console.error(`local-kafka: stop failed: ${errorText(error)}`)
        process.exit(1)
      },
    )
  }
  process.on('SIGINT', shutdown)
  process.on('SIGTERM', shutdown)
}

if (typeof require !== 'undefined' && typeof module !== 'undefined' && require.main === module) {
  main(process.argv.slice(2)).catch((error: unknown) => {
    console.error(`local-kafka: ${errorText(error)}`)
    process.exit(1)
  })
}
