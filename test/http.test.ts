import { spawn } from 'node:child_process'
import { createServer } from 'node:net'
import { createInterface } from 'node:readline'
import { Writable } from 'node:stream'
import { afterEach, describe, expect, it } from 'vitest'
import { OpsServer, type Health } from '../consumer/http'
import { createLogger, redactSecrets } from '../consumer/logger'
import { ServiceMetrics } from '../consumer/metrics'
import { packageRoot } from '../consumer/paths'
import { parseExposition, sumOf } from './helpers/prometheus'

const silent = createLogger('silent')

/** Every metric name the operations docs promise (keep in step with docs/OPERATIONS.md). */
const documented: [name: string, type: string][] = [
  ['kwa_samples_in_total', 'counter'],
  ['kwa_samples_aggregated_total', 'counter'],
  ['kwa_samples_late_total', 'counter'],
  ['kwa_samples_rejected_total', 'counter'],
  ['kwa_poison_messages_total', 'counter'],
  ['kwa_batches_total', 'counter'],
  ['kwa_windows_open', 'gauge'],
  ['kwa_windows_emitted_total', 'counter'],
  ['kwa_native_bytes_held', 'gauge'],
  ['kwa_batch_duration_seconds', 'histogram'],
  ['kwa_transaction_duration_seconds', 'histogram'],
  ['kwa_commit_duration_seconds', 'histogram'],
  ['kwa_consumer_lag', 'gauge'],
  ['kwa_rebalances_total', 'counter'],
  ['kwa_transaction_aborts_total', 'counter'],
  ['kwa_restore_duration_seconds', 'histogram'],
  ['kwa_ready', 'gauge'],
  ['nodejs_gc_duration_seconds', 'histogram'],
  ['process_cpu_seconds_total', 'counter'],
  ['process_resident_memory_bytes', 'gauge'],
]

describe('ServiceMetrics', () => {
  const source = {
    ready: () => true,
    partitions: () => [
      { partition: 0, openWindows: 12, bytesHeld: 4096 },
      { partition: 3, openWindows: 5, bytesHeld: 1024 },
    ],
    lag: () => [{ topic: 'telemetry', partition: 3, lag: 42 }],
  }

  it('exposes every documented metric with its type, unprefixed', async () => {
    const metrics = new ServiceMetrics(source)
    metrics.samplesRejected.inc({ reason: 'non_finite_value' }, 0)
    const text = await metrics.scrape()
    const exposition = parseExposition(text)
    for (const [name, type] of documented) {
      expect(exposition.types.get(name), name).toBe(type)
    }
    expect(metrics.contentType).toMatch(/^text\/plain/)
  })

  it('reads gauges at scrape time, per partition', async () => {
    const metrics = new ServiceMetrics(source, { defaultMetrics: false })
    const exposition = parseExposition(await metrics.scrape())
    expect(sumOf(exposition, 'kwa_ready')).toBe(1)
    expect(sumOf(exposition, 'kwa_windows_open', { partition: '0' })).toBe(12)
    expect(sumOf(exposition, 'kwa_windows_open')).toBe(17)
    expect(sumOf(exposition, 'kwa_native_bytes_held', { partition: '3' })).toBe(1024)
    expect(sumOf(exposition, 'kwa_consumer_lag', { topic: 'telemetry', partition: '3' })).toBe(42)
  })

  it('several registries in one process do not clash', async () => {
    const a = new ServiceMetrics(source)
    const b = new ServiceMetrics(source)
    a.samplesIn.inc(5)
    b.samplesIn.inc(7)
    expect(sumOf(parseExposition(await a.scrape()), 'kwa_samples_in_total')).toBe(5)
    expect(sumOf(parseExposition(await b.scrape()), 'kwa_samples_in_total')).toBe(7)
  })
})

describe('parseExposition', () => {
  it('reads labels with escapes, special values and timestamps', () => {
    const text = [
      '# HELP x_total An x.',
      '# TYPE x_total counter',
      'x_total{a="1",b="q\\"uo\\\\te\\nnl"} 3 1700000000000',
      'y_bucket{le="+Inf"} +Inf',
      'z NaN',
      '',
    ].join('\n')
    const e = parseExposition(text)
    expect(e.types.get('x_total')).toBe('counter')
    expect(e.samples[0]).toEqual({
      name: 'x_total',
      labels: { a: '1', b: 'q"uo\\te\nnl' },
      value: 3,
    })
    expect(e.samples[1]?.value).toBe(Infinity)
    expect(e.samples[2]?.value).toBeNaN()
    expect(() => parseExposition('bad{a=1} 2')).toThrow()
  })
})

describe('OpsServer', () => {
  const servers: OpsServer[] = []
  afterEach(async () => {
    await Promise.all(servers.splice(0).map((s) => s.close()))
  })

  let health: Health = { live: true, ready: false, status: 'starting' }
  const start = async (port = 0) => {
    const server = await OpsServer.start(
      { host: '127.0.0.1', port },
      {
        health: () => health,
        metrics: () => Promise.resolve({ contentType: 'text/plain; version=0.0.4', body: 'a 1\n' }),
      },
      silent,
    )
    servers.push(server)
    return server
  }

  it('answers /healthz, /readyz and /metrics; port 0 picks a free port', async () => {
    const server = await start()
    expect(server.port).toBeGreaterThan(0)
    expect(server.url).toBe(`http://127.0.0.1:${server.port}`)

    health = { live: true, ready: false, status: 'starting', detail: { generation: 0 } }
    let response = await fetch(`${server.url}/healthz`)
    expect(response.status).toBe(200)
    expect(await response.json()).toEqual({ status: 'ok', generation: 0 })
    response = await fetch(`${server.url}/readyz`)
    expect(response.status).toBe(503)
    expect(await response.json()).toEqual({ status: 'starting', generation: 0 })

    health = { live: true, ready: true, status: 'ready', detail: { partitions: [0, 1] } }
    response = await fetch(`${server.url}/readyz`)
    expect(response.status).toBe(200)
    expect(await response.json()).toEqual({ status: 'ready', partitions: [0, 1] })

    health = { live: false, ready: false, status: 'failed', detail: { error: 'poison' } }
    response = await fetch(`${server.url}/healthz`)
    expect(response.status).toBe(503)
    expect(await response.json()).toEqual({ status: 'failed', error: 'poison' })

    response = await fetch(`${server.url}/metrics`)
    expect(response.status).toBe(200)
    expect(response.headers.get('content-type')).toBe('text/plain; version=0.0.4')
    expect(await response.text()).toBe('a 1\n')

    expect((await fetch(`${server.url}/nope`)).status).toBe(404)
    expect((await fetch(`${server.url}/metrics`, { method: 'POST' })).status).toBe(405)
  })

  it('a port in use fails at start, naming the options', async () => {
    const blocker = createServer()
    await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve))
    const port = (blocker.address() as { port: number }).port
    try {
      await expect(start(port)).rejects.toThrow(
        /cannot serve .* on 127\.0\.0\.1:\d+ \(--http-host, --http-port; KWA_HTTP_HOST, KWA_HTTP_PORT\): EADDRINUSE/,
      )
    } finally {
      blocker.close()
    }
  })

  it('close() does not wait for idle keep-alive connections', async () => {
    const server = await start()
    await (await fetch(`${server.url}/healthz`)).text()
    const started = Date.now()
    await server.close()
    expect(Date.now() - started).toBeLessThan(1_500)
  })
})

describe('log redaction', () => {
  function capture() {
    const lines: string[] = []
    const stream = new Writable({
      write(chunk: Buffer, _encoding, done) {
        lines.push(chunk.toString())
        done()
      },
    })
    return { lines, logger: createLogger('info', stream) }
  }

  it('never writes passwords, secrets or keys, at any depth, and leaves the object alone', () => {
    const { lines, logger } = capture()
    const config = {
      brokers: ['kafka:9092'],
      saslUsername: 'svc',
      saslPassword: 'hunter2',
      sslKey: '/etc/kwa/key.pem',
      nested: [{ clientSecret: 's3cret', apiPassword: 'pw', fine: 1 }],
    }
    logger.info({ config }, 'configuration')
    logger.child({ password: 'child-pw' }).warn({ sasl: { password: 'deep' } }, 'x')
    logger.child({ ns: 'A' }).child({ ns2: 'B', secret: 'grand' }).info('y')
    const out = lines.join('')
    for (const secret of ['hunter2', 's3cret', 'child-pw', 'deep', 'grand', 'key.pem', '"pw"']) {
      expect(out).not.toContain(secret)
    }
    expect(out).toContain('"saslUsername":"svc"')
    expect(out).toContain('"saslPassword":"[redacted]"')
    expect(out).toContain('"fine":1')
    expect(out).toMatch(/"ns":"A","ns2":"B","secret":"\[redacted\]","msg":"y"/)
    expect(config.saslPassword).toBe('hunter2')
    expect(config.nested[0]?.clientSecret).toBe('s3cret')
  })

  it('returns the same object when there is nothing to redact', () => {
    const value = { a: 1, b: [{ c: 'x' }], err: new Error('password wrong') }
    expect(redactSecrets(value)).toBe(value)
    expect(redactSecrets({ passwordFile: undefined })).toEqual({ passwordFile: undefined })
  })
})

describe('kwa run shutdown', () => {
  /** A port nothing listens on. */
  async function closedPort(): Promise<number> {
    const server = createServer()
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    const port = (server.address() as { port: number }).port
    await new Promise<void>((resolve) => server.close(() => resolve()))
    return port
  }

  it('serves health while starting, and exits with code 1 when stopping outlasts --shutdown-timeout', async () => {
    // No broker: start() hangs in kafkajs' connection retries, so the stop cannot finish.
    const child = spawn(
      process.execPath,
      [
        '--import',
        'tsx',
        'consumer/cli.ts',
        'run',
        '--brokers',
        `127.0.0.1:${await closedPort()}`,
        '--http-port',
        '0',
        '--shutdown-timeout',
        '1s',
      ],
      {
        cwd: packageRoot,
        env: { PATH: process.env.PATH ?? '' },
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    )
    const exited = new Promise<number | null>((resolve) =>
      child.once('exit', (code) => resolve(code)),
    )
    const lines: string[] = []
    const url = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`no URL logged:\n${lines.join('\n')}`)),
        30_000,
      )
      createInterface({ input: child.stderr }).on('line', (line) => {
        lines.push(line)
        const entry = JSON.parse(line) as { msg?: string; url?: string }
        if (entry.msg === 'http server listening' && entry.url !== undefined) {
          clearTimeout(timer)
          resolve(entry.url)
        }
      })
    })
    try {
      expect((await fetch(`${url}/healthz`)).status).toBe(200)
      const ready = await fetch(`${url}/readyz`)
      expect(ready.status).toBe(503)
      expect(await ready.json()).toMatchObject({ status: 'starting' })

      const signalled = Date.now()
      child.kill('SIGTERM')
      expect(await exited).toBe(1)
      const elapsed = Date.now() - signalled
      expect(elapsed).toBeGreaterThanOrEqual(900)
      expect(elapsed).toBeLessThan(10_000)
      expect(lines.join('\n')).toMatch(
        /"level":50.*"shutdownTimeoutMs":1000.*shutdown did not finish/,
      )
    } finally {
      child.kill('SIGKILL')
    }
  })
})
