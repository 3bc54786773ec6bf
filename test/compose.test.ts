import { readFileSync } from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { parse } from 'yaml'
import { buildProgram } from '../consumer/cli'
import { optionSpecs } from '../consumer/config'

/** No Docker engine runs here: check the compose file against the real CLI instead. */
interface Service {
  image?: string
  build?: unknown
  command?: string[] | string
  environment?: Record<string, string | number>
  depends_on?: Record<string, unknown>
}

const root = path.resolve(__dirname, '..')
const compose = parse(readFileSync(path.join(root, 'docker-compose.yml'), 'utf8'), {
  merge: true,
}) as {
  services: Record<string, Service>
}
const kwaImage = compose.services['aggregator']?.image
const kwaServices = Object.entries(compose.services).filter(([, s]) => s.image === kwaImage)
const knownEnv = new Set(Object.values(optionSpecs).map((s) => s.env))

describe('docker-compose.yml', () => {
  it('runs Kafka in KRaft mode from the official image and creates the topics', () => {
    const kafka = compose.services['kafka']
    expect(kafka?.image).toMatch(/^apache\/kafka:\d/)
    expect(kafka?.environment?.['KAFKA_PROCESS_ROLES']).toBe('broker,controller')
    const topics = JSON.stringify(compose.services['topics']?.command)
    expect(topics).toContain('--topic telemetry ')
    expect(topics).toContain('--topic telemetry-aggregates ')
  })

  it('builds the aggregator from the Dockerfile and can scale it (no fixed name or host port)', () => {
    const aggregator = compose.services['aggregator'] as Service & Record<string, unknown>
    expect(aggregator.build).toBe('.')
    expect(aggregator['container_name']).toBeUndefined()
    expect(aggregator['ports']).toBeUndefined()
    expect(readFileSync(path.join(root, 'Dockerfile'), 'utf8')).toMatch(
      /ENTRYPOINT \["node", "dist\/consumer\/cli\.js"\]/,
    )
    expect(kwaServices.map(([name]) => name).sort()).toEqual(['aggregator', 'producer', 'tail'])
  })

  it.each(kwaServices)('service %s uses real kwa commands, options and variables', (_, service) => {
    const command = service.command
    expect(Array.isArray(command)).toBe(true)
    const [name, ...args] = command as string[]
    const subcommand = buildProgram().commands.find((c) => c.name() === name)
    expect(subcommand, `kwa has no command ${name}`).toBeDefined()
    const flags = new Set(subcommand?.options.map((o) => o.long))
    for (const arg of args.filter((a) => a.startsWith('--'))) {
      expect(flags.has(arg), `kwa ${name} has no option ${arg}`).toBe(true)
    }
    const env = Object.keys(service.environment ?? {})
    expect(env.length).toBeGreaterThan(0)
    for (const variable of env)
      expect(knownEnv.has(variable), `unknown variable ${variable}`).toBe(true)
  })
})
