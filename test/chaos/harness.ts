/**
 * Chaos harness for `kwa run`: its own single-node KRaft broker (so it may kill -9 and restart
 * it), aggregator replicas as separate processes (start, SIGTERM, kill -9, SIGSTOP/SIGCONT,
 * scale), a steady seeded telemetry producer, and a verifier that recomputes the expected windows
 * from what is really in the input topic and compares them with what a read_committed reader sees
 * in the output topic.
 *
 * Used by test/integration/chaos.test.ts (a short run per scenario) and scripts/chaos.ts (the
 * soak). No vitest import here: the soak runs under plain tsx.
 *
 * This file is the entry point: it re-exports what the tests and the soak use. The harness lives
 * in test/chaos/, one file per responsibility:
 *   common.ts             fixed geometry, delivery mode, small utilities and waits
 *   kafka-clients.ts      the harness's own kafkajs clients, admin, last stable offsets
 *   processes.ts          child-process exits, no child left behind
 *   faults.ts             CPU starvation (CpuHog)
 *   replicas.ts           replica processes (Replica)
 *   input-producer.ts     the workload (InputProducer)
 *   topic-reader.ts       reading topics back with kafkajs
 *   librdkafka-reader.ts  the independent librdkafka (Python) read_committed reader
 *   verify.ts             recomputation and comparison
 *   scenario.ts           what a scenario body works with (Scenario), result types
 *   report.ts             results as text (formatResult)
 *   runner.ts             ChaosHarness: broker, logs, one scenario start to verdict
 *   scenarios.ts          the scenario definitions and the soak's rotation
 *
 * Environment:
 *   KWA_KAFKA_VERSION      broker version (default 3.9.2; 4.x works too)
 *   KWA_CHAOS_DELIVERY     exactly-once (default) | at-least-once | none (omit --delivery)
 *   KWA_CHAOS_KEEP_LOGS=1  keep the logs of passing scenarios too (failing ones are always kept)
 *   KWA_CHAOS_SEED         base seed of the producers and of the fault choreography
 *   KWA_CHAOS_SERVICE_ROOT checkout whose consumer/cli.ts the replicas run (default: this one)
 */
export {
  PARTITIONS,
  SESSION_TIMEOUT_MS,
  WINDOW,
  deliveryFromEnv,
  sleep,
  type Delivery,
} from './common'
export { CpuHog } from './faults'
export { InputProducer, defaultInput, type InputOptions, type InputStats } from './input-producer'
export { readCommittedWithLibrdkafka } from './librdkafka-reader'
export { type ProcessExit } from './processes'
export { Replica, type Readiness } from './replicas'
export { formatResult } from './report'
export { ChaosHarness, type HarnessOptions } from './runner'
export {
  Scenario,
  type ReplicaSummary,
  type ScenarioOptions,
  type ScenarioResult,
} from './scenario'
export {
  brokerCrash,
  brokerPause,
  brokerStarved,
  coldStart,
  duplicateAndOutOfOrderInput,
  idleThenResume,
  killBetweenSendAndCommit,
  replicaCutOff,
  rollingRestart,
  scaleOutAndIn,
  scenarios,
  sigtermMidStream,
  starvedRebalances,
  zombieReplica,
} from './scenarios'
export {
  compareOutput,
  defaultVerify,
  inputSteps,
  openTransactions,
  verify,
  type Counts,
  type IdleModel,
  type IdleResume,
  type LateCheck,
  type OpenTransactions,
  type Verification,
  type VerifyOptions,
} from './verify'
