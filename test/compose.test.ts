import { readFileSync } from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { parse } from 'yaml'
import { buildProgram } from '../consumer/cli'
import { optionSpecs, parseDuration } from '../consumer/config'
import { ServiceMetrics } from '../consumer/metrics'

/** No Docker engine runs here: check the compose file against the real CLI instead. */
interface Service {
  image?: string
  build?: unknown
  command?: string[] | string
  environment?: Record<string, string | number>
  depends_on?: Record<string, { condition?: string }> | string[]
  healthcheck?: { disable?: boolean; test?: unknown }
  volumes?: string[]
  ports?: string[]
  stop_grace_period?: string
  read_only?: boolean
  tmpfs?: string[]
}

interface ScrapeConfig {
  job_name: string
  metrics_path?: string
  dns_sd_configs?: { names: string[]; type?: string; port: number }[]
}

const root = path.resolve(__dirname, '..')
const readYaml = (file: string): unknown =>
  parse(readFileSync(path.join(root, file), 'utf8'), { merge: true })
const compose = readYaml('docker-compose.yml') as { services: Record<string, Service> }
const dockerfile = readFileSync(path.join(root, 'Dockerfile'), 'utf8')
const kwaImage = compose.services['aggregator']?.image
const kwaServices = Object.entries(compose.services).filter(([, s]) => s.image === kwaImage)
const knownEnv = new Set(Object.values(optionSpecs).map((s) => s.env))
const httpPortDefault = Number(optionSpecs.httpPort.default)

/** The metric families one replica exports (names as in `# TYPE` lines). */
async function exportedMetrics(): Promise<Set<string>> {
  const metrics = new ServiceMetrics({ ready: () => true, partitions: () => [], lag: () => [] })
  const text = await metrics.scrape()
  return new Set([...text.matchAll(/^# TYPE (\S+) /gm)].map((m) => m[1] as string))
}

/** Every metric name an expression uses, histogram/summary suffixes removed. */
const metricNames = (expr: string): string[] =>
  [...expr.matchAll(/\b((?:kwa|nodejs|process)_[a-z_]+)/g)].map((m) =>
    (m[1] as string).replace(/_(bucket|sum|count)$/, ''),
  )

describe('docker-compose.yml', () => {
  it('runs Kafka in KRaft mode from the official image', () => {
    const kafka = compose.services['kafka']
    expect(kafka?.image).toMatch(/^apache\/kafka:\d/)
    expect(kafka?.environment?.['KAFKA_PROCESS_ROLES']).toBe('broker,controller')
  })

  it('creates the topics with `kwa topics` once Kafka is healthy, before anything else runs', () => {
    const topics = compose.services['topics']
    expect(topics?.image).toBe(kwaImage)
    expect((topics?.command as string[])[0]).toBe('topics')
    expect(topics?.depends_on).toEqual({ kafka: { condition: 'service_healthy' } })
    const partitions = (topics?.command as string[])[
      (topics?.command as string[]).indexOf('--partitions') + 1
    ]
    expect(Number(partitions)).toBeGreaterThanOrEqual(3) // room for --scale aggregator=3
    for (const name of ['aggregator', 'producer', 'tail']) {
      expect(compose.services[name]?.depends_on, name).toEqual({
        topics: { condition: 'service_completed_successfully' },
      })
    }
    // The aggregator only checks what `topics` made, under the same group (changelog name).
    const aggregator = compose.services['aggregator']
    expect(aggregator?.environment?.['KWA_CREATE_TOPICS']).toBe('false')
    expect(topics?.environment?.['KWA_GROUP_ID']).toBe(aggregator?.environment?.['KWA_GROUP_ID'])
    expect(topics?.environment?.['KWA_INPUT_TOPIC']).toBe(
      aggregator?.environment?.['KWA_INPUT_TOPIC'],
    )
  })

  it('builds the aggregator from the Dockerfile and can scale it (no fixed name or host port)', () => {
    const aggregator = compose.services['aggregator'] as Service & Record<string, unknown>
    expect(aggregator.build).toBe('.')
    expect(aggregator['container_name']).toBeUndefined()
    expect(aggregator['ports']).toBeUndefined()
    expect(kwaServices.map(([name]) => name).sort()).toEqual([
      'aggregator',
      'producer',
      'tail',
      'topics',
    ])
    // Scrapeable from the Prometheus container.
    expect(aggregator.environment?.['KWA_HTTP_HOST']).toBe('0.0.0.0')
    // Stops on its own before Docker's SIGKILL.
    const timeout = parseDuration(
      String(
        aggregator.environment?.['KWA_SHUTDOWN_TIMEOUT'] ?? optionSpecs.shutdownTimeout.default,
      ),
    )
    const grace = parseDuration(aggregator.stop_grace_period ?? '10s')
    expect(timeout).toBeDefined()
    expect(timeout).toBeLessThan(grace ?? 0)
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

  it('turns the image health check off for commands that serve no HTTP', () => {
    for (const [name, service] of kwaServices) {
      if (name === 'aggregator') expect(service.healthcheck).toBeUndefined()
      else expect(service.healthcheck, name).toEqual({ disable: true })
    }
  })

  it('runs Prometheus scraping every aggregator replica on the kwa HTTP port', () => {
    const prometheus = compose.services['prometheus']
    expect(prometheus?.image).toMatch(/^prom\/prometheus:v\d/)
    const mounts = new Map(
      (prometheus?.volumes ?? []).map((v) => {
        const [from = '', to = ''] = v.split(':')
        return [to, from]
      }),
    )
    expect(mounts.get('/etc/prometheus/prometheus.yml')).toBe('./deploy/prometheus.yml')

    const config = readYaml('deploy/prometheus.yml') as {
      scrape_configs: ScrapeConfig[]
      rule_files?: string[]
    }
    const job = config.scrape_configs.find((c) => c.dns_sd_configs !== undefined)
    expect(job?.metrics_path ?? '/metrics').toBe('/metrics')
    const sd = job?.dns_sd_configs?.[0]
    expect(sd?.names).toEqual(['aggregator'])
    expect(compose.services[sd?.names[0] ?? '']).toBeDefined()
    expect(sd?.type ?? 'SRV').toBe('A')
    const port = Number(
      compose.services['aggregator']?.environment?.['KWA_HTTP_PORT'] ?? httpPortDefault,
    )
    expect(sd?.port).toBe(port)
    expect(port).toBe(9464)

    // Rule files are mounted where the config looks for them.
    for (const file of config.rule_files ?? []) {
      expect(mounts.get(file), file).toMatch(/^\.\/deploy\//)
    }
  })

  it('alerts only on metrics a replica exports', async () => {
    const exported = await exportedMetrics()
    const rules = readYaml('deploy/alerts.yml') as {
      groups: { rules: { alert: string; expr: string }[] }[]
    }
    const exprs = rules.groups.flatMap((g) => g.rules)
    expect(exprs.length).toBeGreaterThan(5)
    for (const { alert, expr } of exprs) {
      for (const name of metricNames(expr)) {
        expect(exported.has(name), `${alert} uses ${name}, which no replica exports`).toBe(true)
      }
    }
  })
})

describe('Dockerfile', () => {
  const stages = dockerfile.split(/^FROM /m).slice(1)
  const runtime = stages.at(-1) ?? ''

  it('builds the Rust addon and the TypeScript in a build stage', () => {
    expect(stages.length).toBeGreaterThanOrEqual(2)
    const build = stages[0] ?? ''
    expect(build).toMatch(/rustup/)
    expect(build).toMatch(/RUN npm run build/) // build:native (napi, release) + build:ts
    expect(build).toMatch(/npm prune --omit=dev/)
    // patch-package runs at npm ci: the patches must be there by then.
    const patches = build.indexOf('COPY patches')
    expect(patches).toBeGreaterThan(-1)
    expect(patches).toBeLessThan(build.indexOf('RUN npm ci'))
  })

  it('runs from a slim image as a non-root user with the compiled CLI', () => {
    expect(runtime).toMatch(/^node:\d+-\S*slim/)
    expect(runtime).not.toMatch(/rustup|cargo/)
    expect(runtime).toMatch(/COPY --from=build \/app\/native\/\*\.node/)
    const user = /^USER (\S+)/m.exec(runtime)?.[1]
    expect(user).toBeDefined()
    expect(['root', '0']).not.toContain(user)
    expect(runtime).toMatch(/ENTRYPOINT \["node", "dist\/consumer\/cli\.js"\]/)
  })

  it('runs every kwa container with a read-only root filesystem and a tmpfs /tmp', () => {
    expect(kwaServices.length).toBeGreaterThanOrEqual(4)
    for (const [name, service] of kwaServices) {
      expect(service.read_only, name).toBe(true)
      expect(
        service.tmpfs?.some((mount) => mount.startsWith('/tmp')),
        name,
      ).toBe(true)
    }
  })

  it('checks health with node (no curl in slim images) on /healthz of the kwa HTTP port', () => {
    const healthcheck = /^HEALTHCHECK (?:.*\\\n)*.*/m.exec(runtime)?.[0] ?? ''
    expect(healthcheck).toMatch(/CMD \["node", "-e"/)
    expect(healthcheck).not.toMatch(/curl|wget/)
    expect(healthcheck).toContain("'http://127.0.0.1:'")
    expect(healthcheck).toContain(`process.env.KWA_HTTP_PORT || ${httpPortDefault})`)
    expect(healthcheck).toContain("'/healthz'")
    expect(httpPortDefault).toBe(9464)
  })
})
