import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { KwaError } from './errors'
import type { Logger } from './logger'

/** What /healthz and /readyz report. */
export interface Health {
  /** /healthz: false once the service failed for good (the process is about to exit). */
  live: boolean
  /** /readyz: joined the group and every assigned partition restored, not shutting down. */
  ready: boolean
  /** One word: e.g. starting, rebalancing, restoring, ready, stopping, failed. */
  status: string
  /** Anything else worth showing (partitions, generation, error). */
  detail?: Record<string, unknown>
}

export interface OpsEndpoints {
  health(): Health
  /** The Prometheus text exposition and its content type. */
  metrics(): Promise<{ contentType: string; body: string }>
}

/**
 * The operations endpoints on plain node:http: GET /metrics (Prometheus), /healthz (liveness)
 * and /readyz (readiness), with small JSON bodies. Nothing else is served.
 */
export class OpsServer {
  private constructor(
    private readonly server: Server,
    /** The bound address: the real port when 0 was asked for. */
    readonly host: string,
    readonly port: number,
  ) {}

  get url(): string {
    const host = this.host.includes(':') ? `[${this.host}]` : this.host
    return `http://${host}:${this.port}`
  }

  /** Listens on host:port (0: any free port); a port in use fails here, naming the option. */
  static async start(
    options: { host: string; port: number },
    endpoints: OpsEndpoints,
    log: Logger,
  ): Promise<OpsServer> {
    const server = createServer((request, response) => {
      handle(endpoints, request, response).catch((error: unknown) => {
        log.warn({ err: error, url: request.url }, 'http request failed')
        if (!response.headersSent) send(response, 500, { status: 'error' })
        else response.destroy()
      })
    })
    // Scrapers keep connections alive; never let one hold a stopping process.
    server.keepAliveTimeout = 5_000
    await new Promise<void>((resolve, reject) => {
      server.once('error', (error: NodeJS.ErrnoException) => {
        reject(
          new KwaError(
            `cannot serve /metrics, /healthz and /readyz on ${options.host}:${options.port} ` +
              `(--http-host, --http-port; KWA_HTTP_HOST, KWA_HTTP_PORT): ${error.code ?? error.message}` +
              (error.code === 'EADDRINUSE' ? '; choose another port, or 0 for any free one' : ''),
            { cause: error },
          ),
        )
      })
      server.listen(options.port, options.host, () => resolve())
    })
    const address = server.address() as AddressInfo
    const ops = new OpsServer(server, address.address, address.port)
    log.info(
      { url: ops.url, endpoints: ['/metrics', '/healthz', '/readyz'] },
      'http server listening',
    )
    return ops
  }

  /** Stops listening; idle keep-alive connections close now, busy ones after their response. */
  async close(): Promise<void> {
    if (!this.server.listening) return
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()))
    this.server.closeIdleConnections()
    const force = setTimeout(() => this.server.closeAllConnections(), 1_000)
    try {
      await closed
    } finally {
      clearTimeout(force)
    }
  }
}

async function handle(
  endpoints: OpsEndpoints,
  request: IncomingMessage,
  response: ServerResponse,
): Promise<void> {
  const path = (request.url ?? '/').split('?')[0] ?? '/'
  if (request.method !== 'GET' && request.method !== 'HEAD') {
    response.setHeader('allow', 'GET, HEAD')
    send(response, 405, { status: 'method not allowed' })
    return
  }
  switch (path) {
    case '/metrics': {
      const { contentType, body } = await endpoints.metrics()
      response.writeHead(200, { 'content-type': contentType, 'cache-control': 'no-store' })
      response.end(request.method === 'HEAD' ? undefined : body)
      return
    }
    case '/healthz': {
      const health = endpoints.health()
      send(response, health.live ? 200 : 503, {
        status: health.live ? 'ok' : health.status,
        ...health.detail,
      })
      return
    }
    case '/readyz': {
      const health = endpoints.health()
      send(response, health.ready ? 200 : 503, { status: health.status, ...health.detail })
      return
    }
    default:
      send(response, 404, { status: 'not found', endpoints: ['/metrics', '/healthz', '/readyz'] })
  }
}

function send(response: ServerResponse, code: number, body: Record<string, unknown>): void {
  const text = `${JSON.stringify(body)}\n`
  response.writeHead(code, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(text),
    'cache-control': 'no-store',
  })
  response.end(response.req.method === 'HEAD' ? undefined : text)
}
