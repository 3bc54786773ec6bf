// TLS for tests: a throwaway CA and certificates made with openssl when the broker starts, and the
// properties of the SSL, mutual-TLS and SASL_SSL listeners. Nothing secret is committed: every key
// is generated into the broker's data dir and deleted with it.
import { execFile } from 'node:child_process'
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { promisify } from 'node:util'

export interface LocalTlsOptions {
  /** Port of the SSL listener (server authentication only). Default: a free port. */
  sslPort?: number
  /** Port of the mutual-TLS listener (SSL, client certificate required). Default: a free port. */
  mtlsPort?: number
  /** Port of the SASL_SSL listener (SCRAM; only with `sasl`). Default: a free port. */
  saslSslPort?: number
  /** Port of an SSL listener whose certificate expired in 2020. Default: a free port. */
  expiredPort?: number
  /** Port of an SSL listener whose certificate names only another host. Default: a free port. */
  wrongHostPort?: number
}

/** PEM files for clients of the TLS listeners. */
export interface LocalTlsFiles {
  /** The CA that signed the broker's and the client's certificates. */
  ca: string
  /** A client certificate (CN=kwa-client) signed by `ca`, and its unencrypted key. */
  clientCert: string
  clientKey: string
  /** A second CA that signed nothing the broker uses: a client trusting only it must fail. */
  otherCa: string
  /** A client certificate signed by `otherCa` and its key: the mutual-TLS listener refuses it. */
  strangerCert: string
  strangerKey: string
}

/** What the broker config needs: its key + certificate chain (one PEM) and the CA it trusts. */
export interface BrokerTls {
  sslPort: number
  mtlsPort: number
  saslSslPort?: number
  expiredPort: number
  wrongHostPort: number
  keystore: string
  /** Keystores of the EXPIRED and WRONGHOST listeners. */
  expiredKeystore: string
  wrongHostKeystore: string
  truststore: string
  files: LocalTlsFiles
}

const run = promisify(execFile)

/** Runs openssl, with its chatter kept out of the way and its error text on failure. */
async function openssl(args: string[], cwd: string): Promise<void> {
  try {
    await run('openssl', args, { cwd })
  } catch (error) {
    const stderr = (error as { stderr?: string }).stderr?.trim()
    throw new Error(`openssl ${args[0]} failed${stderr ? `: ${stderr}` : ''}`, { cause: error })
  }
}

/** A self-signed CA valid for a week: `<name>.pem` and `<name>.key`. */
async function makeCa(dir: string, name: string): Promise<void> {
  const out = ['-keyout', `${name}.key`, '-out', `${name}.pem`, '-subj', `/CN=${name}`]
  await openssl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '7', ...out], dir)
}

/** A key `<name>.key`, a signing request `<name>.csr` (CN=name) and extensions `<name>.ext`. */
async function makeRequest(dir: string, name: string, ext: string[]): Promise<void> {
  const out = ['-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`]
  await openssl(['req', '-newkey', 'rsa:2048', '-nodes', ...out], dir)
  await fs.writeFile(path.join(dir, `${name}.ext`), `${ext.join('\n')}\n`)
}

/** A certificate `<name>.pem` (and `<name>.key`) signed by CA `ca`, with these extensions. */
async function makeLeaf(dir: string, name: string, ca: string, ext: string[]): Promise<void> {
  await makeRequest(dir, name, ext)
  const signer = ['-CA', `${ca}.pem`, '-CAkey', `${ca}.key`, '-CAcreateserial', '-days', '7']
  const io = ['-in', `${name}.csr`, '-extfile', `${name}.ext`, '-out', `${name}.pem`]
  await openssl(['x509', '-req', ...signer, ...io], dir)
}

/**
 * A certificate `<name>.pem` (and `<name>.key`) signed by CA `ca` that expired on 2020-01-02:
 * `openssl x509` cannot backdate, `openssl ca` can.
 */
async function makeExpiredLeaf(dir: string, name: string, ca: string, ext: string[]) {
  await makeRequest(dir, name, ext)
  const config = [
    '[ca]',
    'default_ca = throwaway',
    '[throwaway]',
    `database = ${name}.index`,
    'new_certs_dir = .',
    `certificate = ${ca}.pem`,
    `private_key = ${ca}.key`,
    `serial = ${name}.serial`,
    'default_md = sha256',
    'policy = any',
    '[any]',
    'commonName = supplied',
  ]
  await fs.writeFile(path.join(dir, `${name}.cnf`), `${config.join('\n')}\n`)
  await fs.writeFile(path.join(dir, `${name}.index`), '')
  await fs.writeFile(path.join(dir, `${name}.serial`), '01\n')
  await openssl(
    ['ca', '-batch', '-notext', '-config', `${name}.cnf`, '-in', `${name}.csr`]
      .concat(['-startdate', '20200101000000Z', '-enddate', '20200102000000Z'])
      .concat(['-extfile', `${name}.ext`, '-out', `${name}.pem`]),
    dir,
  )
}

/** Kafka's PEM keystore: the (unencrypted PKCS#8) key and the certificate chain in one file. */
async function writeKeystore(dir: string, name: string, ca: string): Promise<string> {
  const keystore = path.join(dir, `${name}-keystore.pem`)
  const parts = await Promise.all(
    [`${name}.key`, `${name}.pem`, `${ca}.pem`].map((f) => fs.readFile(path.join(dir, f), 'utf8')),
  )
  await fs.writeFile(keystore, parts.join(''), { mode: 0o600 })
  return keystore
}

/**
 * Generates the CAs and certificates into `dir`: the broker's for 127.0.0.1 and localhost, a
 * client's, and a stranger's signed by another CA.
 */
export async function generateTlsFiles(dir: string): Promise<{
  keystore: string
  expiredKeystore: string
  wrongHostKeystore: string
  truststore: string
  files: LocalTlsFiles
}> {
  await fs.mkdir(dir, { recursive: true, mode: 0o700 })
  await makeCa(dir, 'kwa-test-ca')
  await makeCa(dir, 'kwa-other-ca')
  await makeLeaf(dir, 'localhost', 'kwa-test-ca', [
    'subjectAltName=IP:127.0.0.1,DNS:localhost',
    'extendedKeyUsage=serverAuth',
  ])
  await makeExpiredLeaf(dir, 'expired', 'kwa-test-ca', [
    'subjectAltName=IP:127.0.0.1,DNS:localhost',
    'extendedKeyUsage=serverAuth',
  ])
  await makeLeaf(dir, 'elsewhere', 'kwa-test-ca', [
    'subjectAltName=DNS:elsewhere.invalid',
    'extendedKeyUsage=serverAuth',
  ])
  await makeLeaf(dir, 'kwa-client', 'kwa-test-ca', ['extendedKeyUsage=clientAuth'])
  await makeLeaf(dir, 'kwa-stranger', 'kwa-other-ca', ['extendedKeyUsage=clientAuth'])
  const file = (name: string) => path.join(dir, name)
  return {
    keystore: await writeKeystore(dir, 'localhost', 'kwa-test-ca'),
    expiredKeystore: await writeKeystore(dir, 'expired', 'kwa-test-ca'),
    wrongHostKeystore: await writeKeystore(dir, 'elsewhere', 'kwa-test-ca'),
    truststore: file('kwa-test-ca.pem'),
    files: {
      ca: file('kwa-test-ca.pem'),
      clientCert: file('kwa-client.pem'),
      clientKey: file('kwa-client.key'),
      otherCa: file('kwa-other-ca.pem'),
      strangerCert: file('kwa-stranger.pem'),
      strangerKey: file('kwa-stranger.key'),
    },
  }
}

/**
 * The TLS listeners' properties: one PEM keystore and truststore for all but EXPIRED and WRONGHOST
 * (SSL listeners with their own certificates); the MTLS listener (an SSL listener of its own
 * name) requires a client certificate; SASL_SSL enables SCRAM-SHA-512.
 */
export function tlsProperties(tls: BrokerTls, path: (p: string) => string): string[] {
  return [
    'ssl.keystore.type=PEM',
    `ssl.keystore.location=${path(tls.keystore)}`,
    'ssl.truststore.type=PEM',
    `ssl.truststore.location=${path(tls.truststore)}`,
    'listener.name.mtls.ssl.client.auth=required',
    'listener.name.expired.ssl.keystore.type=PEM',
    `listener.name.expired.ssl.keystore.location=${path(tls.expiredKeystore)}`,
    'listener.name.wronghost.ssl.keystore.type=PEM',
    `listener.name.wronghost.ssl.keystore.location=${path(tls.wrongHostKeystore)}`,
    ...(tls.saslSslPort === undefined
      ? []
      : [
          'listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512',
          'listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=' +
            'org.apache.kafka.common.security.scram.ScramLoginModule required;',
        ]),
  ]
}

/** `listeners` entries and protocol-map entries of the TLS listeners. */
export function tlsListeners(tls: BrokerTls): { listeners: string[]; protocols: string[] } {
  const listeners = [
    `SSL://127.0.0.1:${tls.sslPort}`,
    `MTLS://127.0.0.1:${tls.mtlsPort}`,
    `EXPIRED://127.0.0.1:${tls.expiredPort}`,
    `WRONGHOST://127.0.0.1:${tls.wrongHostPort}`,
  ]
  const protocols = ['SSL:SSL', 'MTLS:SSL', 'EXPIRED:SSL', 'WRONGHOST:SSL']
  if (tls.saslSslPort !== undefined) {
    listeners.push(`SASL_SSL://127.0.0.1:${tls.saslSslPort}`)
    protocols.push('SASL_SSL:SASL_SSL')
  }
  return { listeners, protocols }
}
