// KRaft storage format (kafka.tools.StorageTool): cluster id, SCRAM credentials (KIP-900).
import { randomBytes } from 'node:crypto'
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { type BrokerLayout, jvmArgs } from './config'
import { diesWithParent, javaBinary } from './jvm'
import { errorText, execFileText } from './util'

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
export async function formatStorage(layout: BrokerLayout, libsDir: string): Promise<void> {
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
