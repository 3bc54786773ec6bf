/**
 * A TLS check before the Kafka clients connect. kafkajs treats a failed TLS handshake as a
 * connection error and retries it, so a wrong CA or a refused client certificate would show as
 * minutes of retries and a vague error. Instead, one handshake to a bootstrap broker, then one
 * ApiVersions round trip (the first request any client sends, allowed before SASL; with TLS 1.3 a
 * broker refuses a client certificate only after the handshake, so the answer proves it was
 * accepted), and a TLS failure becomes a non-retriable `TlsError` that names the cause and the
 * option to check. Anything else (no answer, refused connection) is left to the clients, which
 * retry it as before.
 */
import { isIP } from 'node:net'
import tls, { type ConnectionOptions } from 'node:tls'
import { KwaError } from './errors'

/** The broker's or our certificate was refused: retrying cannot help. */
export class TlsError extends KwaError {}

/** Node's certificate verification codes, by what to tell the operator. */
const untrustedIssuer = new Set([
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'CERT_SIGNATURE_FAILURE',
  'CERT_UNTRUSTED',
])
const outOfDate = new Set(['CERT_HAS_EXPIRED', 'CERT_NOT_YET_VALID'])
/** OpenSSL alerts a broker sends when it refuses (or did not get) a client certificate. */
const clientCertificateRefused =
  /ALERT_(CERTIFICATE_REQUIRED|BAD_CERTIFICATE|UNKNOWN_CA|CERTIFICATE_UNKNOWN|HANDSHAKE_FAILURE|DECRYPT_ERROR|ACCESS_DENIED)/

/** What went wrong, for the operator, if it is a TLS failure; undefined otherwise. */
export function tlsFailure(error: unknown, broker: string): string | undefined {
  const code = (error as { code?: unknown } | undefined)?.code
  if (typeof code !== 'string') return undefined
  // Certificate errors have short messages; OpenSSL's are several lines of internals.
  const reason = error instanceof Error && !code.startsWith('ERR_SSL') ? error.message : code
  if (untrustedIssuer.has(code)) {
    return (
      `the certificate of broker ${broker} is not signed by a CA we trust (${reason}); ` +
      'check --ssl-ca (without it, the system CAs are trusted)'
    )
  }
  if (outOfDate.has(code)) {
    return `the certificate of broker ${broker} is out of date (${reason}); renew it, or check the clock`
  }
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') {
    return (
      `the certificate of broker ${broker} does not name the host we connect to (${reason}); ` +
      'check --brokers against the certificate'
    )
  }
  if (clientCertificateRefused.test(code)) {
    return (
      `broker ${broker} refused our client certificate, or needs one (${code}); ` +
      'check --ssl-cert and --ssl-key, and that the broker trusts their CA'
    )
  }
  if (code === 'ERR_SSL_WRONG_VERSION_NUMBER') {
    return `broker ${broker} does not speak TLS on that port (${reason}); check --brokers and --ssl`
  }
  return undefined
}

/** An ApiVersions v0 request from client `clientId` (correlation id 1). */
function apiVersionsRequest(clientId: string): Buffer {
  const id = Buffer.from(clientId, 'utf8')
  const body = Buffer.alloc(2 + 2 + 4 + 2 + id.length)
  body.writeInt16BE(18, 0) // ApiVersions
  body.writeInt16BE(0, 2)
  body.writeInt32BE(1, 4)
  body.writeInt16BE(id.length, 8)
  id.copy(body, 10)
  const size = Buffer.alloc(4)
  size.writeInt32BE(body.length, 0)
  return Buffer.concat([size, body])
}

/**
 * Resolves once broker `host:port` completed a TLS handshake and answered a request over it;
 * rejects with a `TlsError` on a TLS failure; resolves too on anything else (including no answer
 * within `timeoutMs`), which the Kafka clients then meet and retry.
 */
function checkBroker(
  broker: string,
  ssl: ConnectionOptions,
  clientId: string,
  timeoutMs: number,
): Promise<void> {
  const colon = broker.lastIndexOf(':')
  const host = broker.slice(0, colon).replace(/^\[|\]$/g, '')
  const port = Number(broker.slice(colon + 1))
  return new Promise((resolve, reject) => {
    const socket = tls.connect({
      ...ssl,
      host,
      port,
      ...(isIP(host) === 0 && { servername: host }),
    })
    const done = (error?: unknown) => {
      clearTimeout(timer)
      socket.destroy()
      const failure = error === undefined ? undefined : tlsFailure(error, broker)
      if (failure === undefined) resolve()
      else reject(new TlsError(`TLS: ${failure}`, { cause: error }))
    }
    const timer = setTimeout(() => done(), timeoutMs)
    socket.once('secureConnect', () => socket.write(apiVersionsRequest(clientId)))
    socket.once('data', () => done())
    socket.once('error', done)
    socket.once('close', () => done())
  })
}

/**
 * With TLS on (`ssl` true or options), checks the first bootstrap broker as `checkBroker` says.
 * One broker is enough: they share the client's settings, and the clients report the rest.
 */
export async function checkTls(
  brokers: readonly string[],
  ssl: boolean | ConnectionOptions | undefined,
  clientId: string,
  timeoutMs = 10_000,
): Promise<void> {
  const first = brokers[0]
  if (ssl === undefined || ssl === false || first === undefined) return
  await checkBroker(first, ssl === true ? {} : ssl, clientId, timeoutMs)
}
