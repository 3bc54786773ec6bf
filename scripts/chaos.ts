/**
 * The chaos soak: every scenario of test/chaos/harness.ts in rotation on its own local broker
 * until the time is up, then one summary line on stdout:
 *
 *   chaos: N scenarios, N windows checked, N missing, N duplicated, N wrong
 *
 * Progress (events, per-scenario results, log paths) goes to stderr. Exits non-zero if anything
 * was missing, duplicated or wrong, if a transaction was left hanging, or if a scenario failed.
 *
 *   npm run chaos -- --minutes N [--kafka-version V] [--scenarios a,b,...]
 *                    [--delivery exactly-once|at-least-once|none] [--starve N]
 *
 * --starve N runs N busy loops beside everything for the whole soak (CPU starvation, as on a
 * crowded node); scenarios i, j and k add their own on top.
 */
import { parseArgs } from 'node:util'
import {
  ChaosHarness,
  CpuHog,
  deliveryFromEnv,
  formatResult,
  scenarios,
  type Delivery,
} from '../test/chaos/harness'

const USAGE =
  'usage: npm run chaos -- --minutes N [--kafka-version V] [--scenarios a,b,...,m] ' +
  '[--delivery exactly-once|at-least-once|none] [--starve N]'

interface Totals {
  scenarios: number
  windows: number
  missing: number
  duplicated: number
  wrong: number
  /** Hanging transactions and scenarios that could not complete. */
  failures: string[]
  /** Not counted as failures (e.g. a replica alive whose consumer stopped). */
  warnings: string[]
}

function parseDelivery(value: string | undefined): Delivery | null {
  if (value === undefined) return deliveryFromEnv()
  if (value === 'none') return null
  if (value === 'exactly-once' || value === 'at-least-once') return value
  throw new Error(`--delivery must be exactly-once, at-least-once or none, not "${value}"`)
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      minutes: { type: 'string' },
      'kafka-version': { type: 'string' },
      scenarios: { type: 'string' },
      delivery: { type: 'string' },
      starve: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  })
  const minutes = Number(values.minutes)
  const starve = Number(values.starve ?? 0)
  if (values.help || !(minutes > 0) || !Number.isInteger(starve) || starve < 0) {
    process.stderr.write(`${USAGE}\n`)
    return values.help ? 0 : 2
  }
  const wanted = values.scenarios?.split(',').map((s) => s.trim())
  const rotation = scenarios.filter((s) => wanted === undefined || wanted.includes(s.name))
  if (rotation.length === 0) {
    process.stderr.write(`no such scenarios: ${values.scenarios}\n${USAGE}\n`)
    return 2
  }

  const say = (line: string) => process.stderr.write(`${line}\n`)
  const totals: Totals = {
    scenarios: 0,
    windows: 0,
    missing: 0,
    duplicated: 0,
    wrong: 0,
    failures: [],
    warnings: [],
  }
  const summary = () =>
    `chaos: ${totals.scenarios} scenarios, ${totals.windows} windows checked, ` +
    `${totals.missing} missing, ${totals.duplicated} duplicated, ${totals.wrong} wrong`
  const exitCode = () =>
    totals.missing + totals.duplicated + totals.wrong + totals.failures.length > 0 ? 1 : 0

  const harness = await ChaosHarness.start({
    kafkaVersion: values['kafka-version'],
    delivery: parseDelivery(values.delivery),
    onEvent: say,
  })
  const hog = starve > 0 ? new CpuHog(starve) : undefined
  if (hog !== undefined) say(`chaos: ${starve} busy loops run beside the soak`)
  let interrupted = false
  const onSignal = (signal: NodeJS.Signals) => {
    if (interrupted) process.exit(130)
    interrupted = true
    say(`chaos: ${signal}, stopping`)
    hog?.stop()
    void harness.close().finally(() => {
      process.stdout.write(`${summary()}\n`)
      process.exit(130)
    })
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)

  // A scenario takes 30-60 s: none starts in the last 30 s (but the first always runs).
  const deadline = Date.now() + minutes * 60_000
  const canStart = (i: number) => i === 0 || deadline - Date.now() >= 30_000
  try {
    for (let i = 0; canStart(i) && !interrupted; i++) {
      const scenario = rotation[i % rotation.length]
      if (scenario === undefined) break
      try {
        const result = await scenario.run(harness, 1)
        if (interrupted) break
        totals.scenarios++
        const c = result.verification.counts
        totals.windows += c.windows
        totals.missing += c.missing
        totals.duplicated += c.duplicated
        totals.wrong += c.wrong
        totals.failures.push(...result.verification.hanging.map((h) => `${result.name}: ${h}`))
        totals.failures.push(
          ...result.verification.readersDisagree.map(
            (d) => `${result.name}: kafkajs and librdkafka disagree: ${d}`,
          ),
        )
        totals.warnings.push(...result.warnings.map((w) => `${result.name}: ${w}`))
        say(formatResult(result))
      } catch (error) {
        if (interrupted) break
        totals.scenarios++
        const message = error instanceof Error ? error.message : String(error)
        totals.failures.push(`${scenario.name}: ${message.split('\n')[0] ?? ''}`)
        say(message)
      }
    }
  } finally {
    hog?.stop()
    if (!interrupted) await harness.close()
  }
  for (const warning of totals.warnings) say(`chaos: warning ${warning}`)
  for (const failure of totals.failures) say(`chaos: FAILED ${failure}`)
  process.stdout.write(`${summary()}\n`)
  return exitCode()
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    process.stderr.write(
      `chaos: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
    )
    process.exit(1)
  },
)
