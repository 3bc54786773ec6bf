// fetchKafka: Maven Central jars -> temp dir -> atomic rename into the cache, under a lock file.
import { randomBytes } from 'node:crypto'
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { diesWithParent } from './jvm'
import {
  errorCode,
  errorText,
  execFileText,
  fileAgeMs,
  isProcessAlive,
  pathExists,
  sleep,
} from './util'
import {
  assertVersion,
  defaultKafkaVersion,
  isKafka4OrLater,
  kafkaCacheDir,
  libsDirOf,
} from './versions'

const FETCH_LOCK_TIMEOUT_MS = 10 * 60_000
const POM_TEMPLATE = path.join(__dirname, '..', 'kafka', 'pom.xml')

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
