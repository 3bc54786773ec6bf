// startLocalBroker: fetch jars, pick ports, write config, format storage, start the JVM.
import { promises as fs } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { BrokerProcess } from './broker-process'
import { type BrokerLayout, layoutFor, writeBrokerConfig } from './config'
import { fetchKafka } from './fetch'
import { assertSaslUsers } from './sasl'
import { formatStorage } from './storage'
import { generateTlsFiles } from './tls'
import type { LocalBroker, LocalBrokerOptions } from './types'
import { freePort } from './util'
import { defaultKafkaVersion } from './versions'

/** Starts a single-node KRaft broker on 127.0.0.1 and resolves once it answers metadata requests. */
export async function startLocalBroker(options: LocalBrokerOptions = {}): Promise<LocalBroker> {
  const version = options.version ?? defaultKafkaVersion()
  const libsDir = await fetchKafka(version)
  const ownsDataDir = options.dataDir === undefined
  const dataDir = options.dataDir
    ? path.resolve(options.dataDir)
    : await fs.mkdtemp(path.join(os.tmpdir(), 'kwa-kafka-'))
  await fs.mkdir(dataDir, { recursive: true })

  const port = options.port ?? (await freePort())
  const controllerPort = options.controllerPort ?? (await freePort([port]))
  let sasl: BrokerLayout['sasl']
  if (options.sasl !== undefined) {
    assertSaslUsers(options.sasl.users)
    const saslPort = options.sasl.port ?? (await freePort([port, controllerPort]))
    sasl = { port: saslPort, users: options.sasl.users }
  }
  let tls: BrokerLayout['tls']
  if (options.tls !== undefined) {
    const taken = [port, controllerPort, ...(sasl ? [sasl.port] : [])]
    const pick = async (given: number | undefined) => {
      const chosen = given ?? (await freePort(taken))
      taken.push(chosen)
      return chosen
    }
    const sslPort = await pick(options.tls.sslPort)
    const mtlsPort = await pick(options.tls.mtlsPort)
    const saslSslPort = sasl ? await pick(options.tls.saslSslPort) : undefined
    const expiredPort = await pick(options.tls.expiredPort)
    const wrongHostPort = await pick(options.tls.wrongHostPort)
    const generated = await generateTlsFiles(path.join(dataDir, 'tls'))
    tls = { sslPort, mtlsPort, saslSslPort, expiredPort, wrongHostPort, ...generated }
  }
  const layout = layoutFor(version, dataDir, port, controllerPort, sasl, tls, options.authorizer)
  const runner = new BrokerProcess(layout, libsDir, options)
  try {
    await writeBrokerConfig(layout)
    await formatStorage(layout, libsDir)
    await runner.start()
  } catch (error) {
    if (ownsDataDir) await fs.rm(dataDir, { recursive: true, force: true })
    throw error
  }
  return {
    brokers: `127.0.0.1:${port}`,
    saslBrokers: sasl ? `127.0.0.1:${sasl.port}` : undefined,
    tls: tls && {
      sslBrokers: `127.0.0.1:${tls.sslPort}`,
      mtlsBrokers: `127.0.0.1:${tls.mtlsPort}`,
      saslSslBrokers: tls.saslSslPort === undefined ? undefined : `127.0.0.1:${tls.saslSslPort}`,
      expiredBrokers: `127.0.0.1:${tls.expiredPort}`,
      wrongHostBrokers: `127.0.0.1:${tls.wrongHostPort}`,
      files: tls.files,
    },
    version,
    port,
    controllerPort,
    dataDir,
    logFile: layout.logFile,
    stop: () => runner.stop(),
    kill: () => runner.kill(),
    signal: (signal) => runner.signal(signal),
    pid: () => runner.pid(),
    restart: async () => {
      await runner.stop()
      await runner.start()
    },
    cleanup: async () => {
      await runner.stop()
      if (ownsDataDir) await fs.rm(dataDir, { recursive: true, force: true })
    },
  }
}
