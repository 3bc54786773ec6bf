import { readFileSync } from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { optionSpecs, type OptionName } from '../consumer/config'
import { securityOptions } from '../consumer/kafka'
import { ServiceMetrics } from '../consumer/metrics'

/** docs/OPERATIONS.md and the README against the code they describe. */
const root = path.resolve(__dirname, '..')
const operations = readFileSync(path.join(root, 'docs', 'OPERATIONS.md'), 'utf8')
const readme = readFileSync(path.join(root, 'README.md'), 'utf8')

async function exportedKwaMetrics(): Promise<string[]> {
  const metrics = new ServiceMetrics(
    { ready: () => true, partitions: () => [], lag: () => [] },
    { defaultMetrics: false },
  )
  const text = await metrics.scrape()
  return [...text.matchAll(/^# TYPE (kwa_\S+) /gm)].map((m) => m[1] as string)
}

describe('docs/OPERATIONS.md', () => {
  it('explains every kwa metric a replica exports, and no other', async () => {
    const exported = await exportedKwaMetrics()
    expect(exported.length).toBeGreaterThan(10)
    const table = new Set(
      [...operations.matchAll(/^\| `(kwa_[a-z_]+)(?:\{[^}]*\})?` +\|/gm)].map((m) => m[1]),
    )
    expect([...table].sort()).toEqual([...exported].sort())
    const mentioned = new Set(
      [...operations.matchAll(/\b(kwa_[a-z_]+)/g)].map((m) =>
        (m[1] as string).replace(/_(bucket|sum|count)$/, ''),
      ),
    )
    for (const name of mentioned) expect(exported, `${name} is not exported`).toContain(name)
  })

  it('is linked from the README', () => {
    expect(readme).toContain('(docs/OPERATIONS.md)')
  })
})

describe('README configuration table', () => {
  const documented: OptionName[] = [
    ...securityOptions,
    'createTopics',
    'replicationFactor',
    'retention',
    'config',
    'httpHost',
    'httpPort',
    'shutdownTimeout',
  ]

  it.each(documented)('has a row for %s with its flag and variable', (key) => {
    const spec = optionSpecs[key]
    const flag = spec.flags.split(/[ ,]+/).find((f) => f.startsWith('--'))
    expect(readme).toMatch(new RegExp(`^\\| \`${flag}\` +\\| \`${spec.env}\` +\\|`, 'm'))
  })
})
