// Scenario results as text: per-replica summaries, log excerpts, formatResult().
import { seconds } from './common'
import { describeExit } from './processes'
import { type Replica } from './replicas'
import { type ReplicaSummary, type ScenarioResult } from './scenario'

export function summarise(r: Replica): ReplicaSummary {
  return {
    name: r.name,
    logFile: r.logFile,
    incarnations: r.incarnations,
    exits: r.exits.map((e) => `${e.cause} (${describeExit(e.exit)}) after ${seconds(e.afterMs)}`),
    errorLines: r.errorLines,
    consumerCrashes: r.consumerCrashes,
    idleAdvances: r.idleAdvances,
  }
}

export function excerpts(replicas: readonly Replica[]): string {
  return replicas
    .map((r) => `--- ${r.name}: ${r.logFile} (last lines) ---\n${r.recentLines(12)}`)
    .join('\n')
}

function describeReplica(x: ReplicaSummary): string {
  const notes = [
    ...x.exits,
    ...(x.consumerCrashes > 0 ? [`${x.consumerCrashes} kafkajs consumer crash(es)`] : []),
    ...(x.errorLines > 0 ? [`${x.errorLines} error lines`] : []),
  ]
  return `${x.name} ×${x.incarnations}${notes.length > 0 ? ` [${notes.join('; ')}]` : ''}`
}

/** A multi-line human summary of a result. */
export function formatResult(r: ScenarioResult): string {
  const v = r.verification
  const c = v.counts
  const lines = [
    `${r.name}: ${r.passed ? 'PASS' : 'FAIL'} in ${seconds(r.durationMs)} (seed ${r.seed}) — ` +
      `${c.windows} windows checked, ${c.missing} missing, ${c.duplicated} duplicated, ${c.wrong} wrong` +
      (v.hanging.length > 0 ? `, ${v.hanging.length} hanging transaction(s)` : ''),
    `  input ${v.inputMessages} messages (${r.input.duplicates} sent twice, ${r.input.sendFailures} failed sends), ` +
      `${v.inputSamples} samples, ${v.lateSamples} late; output ${v.outputRecords} committed / ` +
      `${v.outputRecordsUncommitted} uncommitted records; settled in ${seconds(v.settleMs)}`,
    `  replicas: ${r.replicas.map(describeReplica).join(', ')}`,
  ]
  for (const [kind, list] of Object.entries(v.examples)) {
    if (list.length > 0) lines.push(`  ${kind}: ${list.join(' | ')}`)
  }
  if (v.late !== undefined) {
    lines.push(
      `  late topic: ${v.late.published} records for ${v.late.expected} late samples, ` +
        `${v.late.missing} missing, ${v.late.extra} extra` +
        (v.late.examples.length > 0 ? `: ${v.late.examples.join(' | ')}` : ''),
    )
  }
  lines.push(...v.hanging.map((h) => `  hanging: ${h}`))
  if (v.readersDisagree.length > 0) {
    lines.push(
      `  kafkajs and librdkafka disagree on ${v.readersDisagree.length} committed record(s): ` +
        v.readersDisagree.slice(0, 5).join(', '),
    )
  }
  lines.push(...r.warnings.map((w) => `  warning: ${w}`))
  if (!r.passed) lines.push(`  logs: ${r.logDir}`, r.excerpts)
  return lines.join('\n')
}
