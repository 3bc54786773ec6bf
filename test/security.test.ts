import { spawnSync } from 'node:child_process'
import net from 'node:net'
import { describe, expect, it } from 'vitest'
import { buildProgram } from '../consumer/cli'
import { parseConfig } from '../consumer/config'
import { ConfigError } from '../consumer/errors'
import { kafkaSecurity, securityOptions } from '../consumer/kafka'
import { packageRoot } from '../consumer/paths'
import { checkTls, TlsError, tlsFailure } from '../consumer/tls'

/** The security options as a command would parse them from flags or environment variables. */
const parse = (raw: Record<string, unknown>) => parseConfig(securityOptions, raw)

const pem: Record<string, string> = {
  '/etc/kwa/ca.pem': 'CA PEM',
  '/etc/kwa/client.pem': 'CERT PEM',
  '/etc/kwa/client.key': 'KEY PEM',
}
const readFile = (file: string): string => {
  const content = pem[file]
  if (content === undefined) {
    throw Object.assign(new Error(`ENOENT: no such file, open '${file}'`), { code: 'ENOENT' })
  }
  return content
}

function securityError(raw: Record<string, unknown>): ConfigError {
  try {
    kafkaSecurity(parse(raw), readFile)
  } catch (error) {
    if (error instanceof ConfigError) return error
    throw error
  }
  throw new Error(`${JSON.stringify(raw)} was accepted`)
}

describe('kafkaSecurity', () => {
  it('is plaintext without authentication by default', () => {
    expect(kafkaSecurity(parse({}), readFile)).toEqual({})
    expect(kafkaSecurity(parse({ ssl: 'false' }), readFile)).toEqual({})
  })

  it('uses the system CAs for a bare --ssl', () => {
    expect(kafkaSecurity(parse({ ssl: true }), readFile)).toEqual({ ssl: true })
    expect(kafkaSecurity(parse({ ssl: '1' }), readFile)).toEqual({ ssl: true })
  })

  it('reads the CA, certificate and key files', () => {
    const security = kafkaSecurity(
      parse({
        ssl: 'true',
        sslCa: '/etc/kwa/ca.pem',
        sslCert: '/etc/kwa/client.pem',
        sslKey: '/etc/kwa/client.key',
      }),
      readFile,
    )
    expect(security).toEqual({
      ssl: { rejectUnauthorized: true, ca: ['CA PEM'], cert: 'CERT PEM', key: 'KEY PEM' },
    })
  })

  it('can skip certificate verification', () => {
    expect(kafkaSecurity(parse({ ssl: true, sslRejectUnauthorized: 'false' }), readFile)).toEqual({
      ssl: { rejectUnauthorized: false },
    })
  })

  it.each(['plain', 'scram-sha-256', 'scram-sha-512'])('passes SASL %s credentials', (m) => {
    const security = kafkaSecurity(
      parse({ saslMechanism: m, saslUsername: 'alice', saslPassword: 'alice-secret' }),
      readFile,
    )
    expect(security).toEqual({
      sasl: { mechanism: m, username: 'alice', password: 'alice-secret' },
    })
  })

  it.each([
    [
      { saslMechanism: 'scram-sha-256', saslUsername: 'alice' },
      '--sasl-password (KWA_SASL_PASSWORD)',
    ],
    [
      { saslMechanism: 'scram-sha-256', saslPassword: 'secret' },
      '--sasl-username (KWA_SASL_USERNAME)',
    ],
    [{ saslUsername: 'alice', saslPassword: 'secret' }, '--sasl-mechanism (KWA_SASL_MECHANISM)'],
    [{ saslPassword: 'secret' }, '--sasl-mechanism (KWA_SASL_MECHANISM)'],
  ])('SASL options are required together: %j names %s', (raw, missing) => {
    const error = securityError(raw)
    expect(error.option).toBe(missing)
    expect(error.message).toMatch(/required with/)
    expect(error.message).not.toContain('secret')
  })

  it('refuses TLS files without --ssl', () => {
    expect(securityError({ sslCa: '/etc/kwa/ca.pem' }).option).toBe('--ssl-ca (KWA_SSL_CA)')
    expect(securityError({ ssl: 'false', sslKey: '/etc/kwa/client.key' }).option).toBe(
      '--ssl-key (KWA_SSL_KEY)',
    )
  })

  it('needs a client certificate and its key together', () => {
    const error = securityError({ ssl: true, sslCert: '/etc/kwa/client.pem' })
    expect(error.option).toBe('--ssl-key (KWA_SSL_KEY)')
  })

  it('names an unreadable file, not its content', () => {
    const error = securityError({ ssl: true, sslCa: '/etc/kwa/missing.pem' })
    expect(error.option).toBe('--ssl-ca (KWA_SSL_CA)')
    expect(error.message).toContain('"/etc/kwa/missing.pem" (ENOENT)')
  })

  it('never echoes a bad password', () => {
    const error = securityError({
      saslMechanism: 'scram-sha-256',
      saslUsername: 'alice',
      saslPassword: '',
    })
    expect(error.option).toBe('--sasl-password (KWA_SASL_PASSWORD)')
  })
})

describe('kwa commands that connect', () => {
  it.each(['run', 'produce', 'tail', 'topics'])('kwa %s takes the TLS and SASL options', (name) => {
    const command = buildProgram().commands.find((c) => c.name() === name)
    const flags = new Set(command?.options.map((o) => o.long))
    for (const flag of [
      '--ssl',
      '--ssl-ca',
      '--ssl-cert',
      '--ssl-key',
      '--ssl-reject-unauthorized',
      '--sasl-mechanism',
      '--sasl-username',
      '--sasl-password',
    ]) {
      expect(flags.has(flag), `kwa ${name} ${flag}`).toBe(true)
    }
  })

  it('kwa topics takes the provisioning options, kwa run --create-topics', () => {
    const program = buildProgram()
    const longs = (name: string) =>
      new Set(program.commands.find((c) => c.name() === name)?.options.map((o) => o.long))
    const topics = longs('topics')
    for (const flag of ['--partitions', '--replication-factor', '--retention', '--delivery']) {
      expect(topics.has(flag), flag).toBe(true)
    }
    expect(longs('run').has('--create-topics')).toBe(true)
  })
})

describe('kwa CLI security errors', () => {
  const cli = (args: string[], env: Record<string, string>) =>
    spawnSync(process.execPath, ['--import', 'tsx', 'consumer/cli.ts', ...args], {
      cwd: packageRoot,
      env: { PATH: process.env.PATH ?? '', ...env },
      encoding: 'utf8',
      timeout: 30_000,
    })

  it('exits 2 naming the missing SASL option, without the password', () => {
    const result = cli(['topics'], {
      KAFKA_BROKERS: 'localhost:9092',
      KWA_SASL_MECHANISM: 'scram-sha-512',
      KWA_SASL_PASSWORD: 'hunter2-do-not-print',
    })
    expect(result.status, result.stderr).toBe(2)
    expect(result.stderr.trim()).toBe(
      'kwa: invalid --sasl-username (KWA_SASL_USERNAME): required with ' +
        '--sasl-mechanism (KWA_SASL_MECHANISM) and --sasl-password (KWA_SASL_PASSWORD)',
    )
    expect(result.stderr + result.stdout).not.toContain('hunter2')
  })

  it('reads KWA_SSL=false as false (a bare flag would read any value as true)', () => {
    const result = cli(['tail'], {
      KAFKA_BROKERS: 'localhost:9092',
      KWA_SSL: 'false',
      KWA_SSL_CA: '/nonexistent/ca.pem',
    })
    expect(result.status, result.stderr).toBe(2)
    expect(result.stderr).toContain('invalid --ssl-ca (KWA_SSL_CA): needs --ssl (KWA_SSL)')
  })
})

describe('the TLS check before connecting', () => {
  const broker = '127.0.0.1:9093'
  const coded = (code: string, message = code) => Object.assign(new Error(message), { code })

  it.each([
    ['SELF_SIGNED_CERT_IN_CHAIN', /not signed by a CA we trust.*check --ssl-ca/],
    ['UNABLE_TO_VERIFY_LEAF_SIGNATURE', /not signed by a CA we trust.*check --ssl-ca/],
    ['CERT_HAS_EXPIRED', /out of date/],
    ['ERR_TLS_CERT_ALTNAME_INVALID', /does not name the host.*--brokers/],
    ['ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED', /refused our client certificate.*--ssl-cert/],
    ['ERR_SSL_TLSV1_ALERT_UNKNOWN_CA', /refused our client certificate.*--ssl-cert/],
    ['ERR_SSL_WRONG_VERSION_NUMBER', /does not speak TLS.*--ssl/],
  ])('names the cause of %s and the option to check', (code, expected) => {
    const failure = tlsFailure(coded(code), broker)
    expect(failure).toMatch(expected)
    expect(failure).toContain(broker)
  })

  it.each(['ECONNREFUSED', 'ETIMEDOUT', 'ENOTFOUND'])('leaves %s to the clients', (code) => {
    expect(tlsFailure(coded(code), broker)).toBeUndefined()
    expect(tlsFailure(new Error('no code'), broker)).toBeUndefined()
  })

  it('does nothing without TLS, and resolves when nothing listens (the clients retry that)', async () => {
    await expect(checkTls([broker], undefined, 'kwa')).resolves.toBeUndefined()
    await expect(checkTls([broker], false, 'kwa')).resolves.toBeUndefined()
    const server = net.createServer()
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    const { port } = server.address() as net.AddressInfo
    await new Promise<void>((resolve) => server.close(() => resolve()))
    await expect(checkTls([`127.0.0.1:${port}`], true, 'kwa', 5_000)).resolves.toBeUndefined()
  })

  it('fails fast on a plaintext port, naming it', async () => {
    // A plaintext server answers the TLS hello with bytes that are not TLS.
    const sockets: net.Socket[] = []
    const server = net.createServer((socket) => {
      sockets.push(socket)
      socket.end('HTTP/1.1 400 Bad Request\r\n\r\n')
    })
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    const { port } = server.address() as net.AddressInfo
    try {
      const error = await checkTls([`127.0.0.1:${port}`], true, 'kwa', 5_000).catch(
        (e: unknown) => e,
      )
      expect(error).toBeInstanceOf(TlsError)
      expect((error as TlsError).retriable).toBe(false)
      expect((error as TlsError).message).toMatch(
        /^TLS: broker 127\.0\.0\.1:\d+ does not speak TLS/,
      )
      expect((error as TlsError).message).not.toContain('\n')
    } finally {
      for (const socket of sockets) socket.destroy()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    }
  })
})
