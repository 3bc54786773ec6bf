// The independent reader: committed records read by librdkafka (Python), and where kafkajs disagrees.
import { spawn } from 'node:child_process'
import path from 'node:path'
import { REPO_ROOT, errorText, withTimeout } from './common'
import { type ReadRecord } from './topic-reader'

/** The Python of the test tools (scripts/python-deps.sh): KWA_PYTHON or .cache/venv. */
const testPython = (): string =>
  process.env['KWA_PYTHON']?.trim() || path.join(REPO_ROOT, '.cache', 'venv', 'bin', 'python')

/**
 * Every committed record of `topic`, read by librdkafka (confluent-kafka, read_committed): a
 * client that shares no code with kafkajs or its read_committed patch.
 */
export async function readCommittedWithLibrdkafka(
  brokers: string,
  topic: string,
  timeoutMs = 60_000,
): Promise<{ partition: number; offset: string; value: string | null }[]> {
  const script = path.join(REPO_ROOT, 'scripts', 'python', 'read_committed.py')
  const child = spawn(testPython(), [script, brokers, topic, String(timeoutMs / 1000)], {
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()))
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()))
  const code = await withTimeout(
    new Promise<number | null>((resolve, reject) => {
      child.once('error', reject)
      child.once('exit', resolve)
    }),
    timeoutMs + 15_000,
    `librdkafka reader of ${topic}`,
  ).catch((error: unknown) => {
    child.kill('SIGKILL')
    throw new Error(
      `librdkafka reader (${testPython()}; run npm run deps:python) failed: ${errorText(error)}`,
    )
  })
  if (code !== 0) {
    throw new Error(`librdkafka reader of ${topic} exited with ${code}: ${stderr.trim()}`)
  }
  return stdout
    .split('\n')
    .filter((line) => line.length > 0)
    .map((line) => {
      const { p, o, v } = JSON.parse(line) as { p: number; o: number; v: string | null }
      return { partition: p, offset: String(o), value: v }
    })
}

/** Records one committed read has and the other lacks or holds otherwise, as `p@offset`. */
export function readersDisagree(
  kafkajs: readonly ReadRecord[],
  librdkafka: readonly { partition: number; offset: string; value: string | null }[],
): string[] {
  const other = new Map(librdkafka.map((r) => [`${r.partition}@${r.offset}`, r.value]))
  const differences: string[] = []
  for (const r of kafkajs) {
    const id = `${r.partition}@${r.offset}`
    if (!other.has(id)) differences.push(`${id} only in kafkajs`)
    else if (other.get(id) !== (r.value === null ? null : r.value.toString('hex')))
      differences.push(`${id} differs`)
    other.delete(id)
  }
  for (const id of other.keys()) differences.push(`${id} only in librdkafka`)
  return differences
}
