// The workload: a steady, seeded telemetry producer writing the input topic.
import { Partitioners, type Message, type Producer } from 'kafkajs'
import { encodeTelemetryBatch, type Sample } from '../../consumer/schemas'
import { mulberry32 } from '../reference'
import { PARTITIONS, T0, WINDOW, errorText, seconds, sleep } from './common'
import { harnessKafka } from './kafka-clients'

// ---------------------------------------------------------------------------------------------
// Input: a steady, seeded telemetry producer
// ---------------------------------------------------------------------------------------------

export interface InputOptions {
  keysPerPartition: number
  samplesPerMessage: number
  /** Messages per second over all partitions (one message per partition per tick). */
  messagesPerSecond: number
  /** Event time advance per tick. */
  eventStepMs: number
  /** Fraction of samples stamped up to maxDelayMs in the past. */
  outOfOrderFraction: number
  maxDelayMs: number
  /** Fraction of messages sent twice in a row. */
  duplicateFraction: number
  /** Fraction of ticks that also resend a message from up to 30 ticks back. */
  replayFraction: number
}

export const defaultInput: InputOptions = {
  keysPerPartition: 16,
  samplesPerMessage: 50,
  messagesPerSecond: 40,
  eventStepMs: 100,
  outOfOrderFraction: 0.05,
  maxDelayMs: 1_500,
  duplicateFraction: 0,
  replayFraction: 0,
}

export interface InputStats {
  ticks: number
  messages: number
  duplicates: number
  sendFailures: number
}

/**
 * Produces one TelemetryBatch per partition per tick, series pinned to partitions, synthetic
 * event time advancing `eventStepMs` per tick. A failed send is retried with the same messages
 * (which may duplicate them in the topic: the verifier reads what is really there).
 */
export class InputProducer {
  readonly stats: InputStats = { ticks: 0, messages: 0, duplicates: 0, sendFailures: 0 }
  private readonly producer: Producer
  private readonly random: () => number
  private readonly recent: Message[][] = Array.from({ length: PARTITIONS }, () => [])
  private maxEventTime = T0
  /** Per partition, the highest event time produced. */
  private readonly partitionMax: number[] = Array.from({ length: PARTITIONS }, () => T0)
  /** Added to the event time of every tick from the next one on (see jump()). */
  private eventOffsetMs = 0
  private running = false
  private loop: Promise<void> | undefined
  /** When the send of the last tick sent (its first attempt) started, wall clock; 0: none. */
  lastTickSendStartedAt = 0

  constructor(
    brokers: string,
    private readonly topic: string,
    private readonly options: InputOptions,
    seed: number,
    private readonly note: (text: string) => void,
  ) {
    this.producer = harnessKafka(brokers, 'kwa-chaos-producer').producer({
      createPartitioner: Partitioners.DefaultPartitioner,
      allowAutoTopicCreation: false,
    })
    this.random = mulberry32(seed)
  }

  async start(): Promise<void> {
    await this.connect()
    this.resume()
  }

  /** Connects without starting the flow (resume() starts it). */
  async connect(): Promise<void> {
    await this.producer.connect()
  }

  /** Starts (again) the steady flow after connect() or stop(). */
  resume(): void {
    if (this.running) return
    this.running = true
    this.loop = this.run()
  }

  /** The highest event time produced so far (over every partition). */
  get highestEventTime(): number {
    return this.maxEventTime
  }

  /** Moves the event time of every later tick `ms` forward (a gap in event time). */
  jump(ms: number): void {
    this.eventOffsetMs += ms
  }

  /**
   * One message per partition of `count` samples stamped up to 4 s before the highest event time
   * of that partition so far (in windows that had opened by then), for series of the partition.
   */
  async sendStale(count: number, timeoutMs = 30_000): Promise<void> {
    const messages = Array.from({ length: PARTITIONS }, (_, partition) => ({
      partition,
      value: encodeTelemetryBatch({
        sourceId: `chaos-stale-${partition}`,
        samples: Array.from({ length: count }, () => ({
          seriesKey: seriesKey(
            partition,
            Math.floor(this.random() * this.options.keysPerPartition),
          ),
          eventTime: (this.partitionMax[partition] ?? T0) - Math.floor(this.random() * 4_000),
          value: Math.round((this.random() - 0.5) * 2_000_000) / 1024,
        })),
      }),
    }))
    const deadline = Date.now() + timeoutMs
    if (!(await this.sendUntilDone(messages, () => Date.now() < deadline))) {
      throw new Error(`could not send the stale messages within ${seconds(timeoutMs)}`)
    }
  }

  /** Stops the steady flow (the send in flight completes). */
  async stop(): Promise<void> {
    this.running = false
    await this.loop
  }

  /** One message per partition far enough ahead in event time to close every earlier window. */
  async sendFinal(timeoutMs = 60_000): Promise<void> {
    const eventTime = this.maxEventTime + 2 * WINDOW.sizeMs + WINDOW.graceMs
    const messages = Array.from({ length: PARTITIONS }, (_, partition) => ({
      partition,
      value: encodeTelemetryBatch({
        sourceId: `chaos-final-${partition}`,
        samples: [{ seriesKey: seriesKey(partition, 0), eventTime, value: 0 }],
      }),
    }))
    const deadline = Date.now() + timeoutMs
    if (!(await this.sendUntilDone(messages, () => Date.now() < deadline))) {
      throw new Error(`could not send the final messages within ${seconds(timeoutMs)}`)
    }
  }

  async disconnect(): Promise<void> {
    this.running = false
    await this.loop?.catch(() => undefined)
    await this.producer.disconnect().catch(() => undefined)
  }

  private async run(): Promise<void> {
    const intervalMs = (1000 * PARTITIONS) / this.options.messagesPerSecond
    let next = Date.now()
    while (this.running) {
      const messages = this.tick()
      const sendStartedAt = Date.now()
      if (await this.sendUntilDone(messages, () => this.running)) {
        this.lastTickSendStartedAt = sendStartedAt
      }
      next += intervalMs
      const now = Date.now()
      if (next < now - 1_000) next = now // after a stall, resume the rate rather than burst
      await sleep(next - now)
    }
  }

  private tick(): Message[] {
    const o = this.options
    const tick = this.stats.ticks++
    const messages: Message[] = []
    for (let partition = 0; partition < PARTITIONS; partition++) {
      const base = T0 + tick * o.eventStepMs + this.eventOffsetMs
      const samples: Sample[] = Array.from({ length: o.samplesPerMessage }, () => {
        const key = seriesKey(partition, Math.floor(this.random() * o.keysPerPartition))
        const delay =
          this.random() < o.outOfOrderFraction ? Math.floor(this.random() * o.maxDelayMs) : 0
        const eventTime = base + Math.floor(this.random() * o.eventStepMs) - delay
        // Dyadic values: every sum is exact in binary, whatever the order of addition.
        const value = Math.round((this.random() - 0.5) * 2_000_000) / 1024
        this.maxEventTime = Math.max(this.maxEventTime, eventTime)
        this.partitionMax[partition] = Math.max(this.partitionMax[partition] ?? T0, eventTime)
        return { seriesKey: key, eventTime, value }
      })
      const message: Message = {
        partition,
        value: encodeTelemetryBatch({ sourceId: `chaos-${partition}-${tick}`, samples }),
      }
      messages.push(message)
      if (this.random() < o.duplicateFraction) {
        messages.push(message)
        this.stats.duplicates++
      }
      const recent = this.recent[partition] ?? []
      if (recent.length > 0 && this.random() < o.replayFraction) {
        const old = recent[Math.floor(this.random() * recent.length)]
        if (old !== undefined) {
          messages.push(old)
          this.stats.duplicates++
        }
      }
      recent.push(message)
      if (recent.length > 30) recent.shift()
    }
    return messages
  }

  /** Sends, retrying the same messages every 500 ms while `keepTrying()`; true once sent. */
  private async sendUntilDone(messages: Message[], keepTrying: () => boolean): Promise<boolean> {
    let failingSince: number | undefined
    for (;;) {
      try {
        await this.producer.send({ topic: this.topic, acks: -1, messages })
        this.stats.messages += messages.length
        if (failingSince !== undefined) {
          this.note(`input producer recovered after ${seconds(Date.now() - failingSince)}`)
        }
        return true
      } catch (error) {
        this.stats.sendFailures++
        if (failingSince === undefined) {
          failingSince = Date.now()
          this.note(`input producer: send failed (${errorText(error)}), retrying`)
        }
        if (!keepTrying()) return false
        await sleep(500)
      }
    }
  }
}

const seriesKey = (partition: number, index: number): string =>
  `host-${partition}-${index.toString().padStart(2, '0')}/cpu`
