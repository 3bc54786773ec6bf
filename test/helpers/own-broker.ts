/**
 * A jar broker of a test file's own (SASL, TLS or ACLs: what the shared one does not have),
 * started by the first test that asks for it, not in beforeAll: a broker that cannot start then
 * fails each test (vitest would report the tests of a failed beforeAll as skipped). Stopped and
 * deleted after the file's tests.
 */
import { afterAll } from 'vitest'
import {
  startLocalBroker,
  type LocalBroker,
  type LocalBrokerOptions,
} from '../../scripts/local-kafka'

export function ownBroker(options: LocalBrokerOptions): () => Promise<LocalBroker> {
  let broker: Promise<LocalBroker> | undefined
  afterAll(async () => {
    await (await broker?.catch(() => undefined))?.cleanup()
  }, 60_000)
  return () => (broker ??= startLocalBroker(options))
}
