/**
 * A small parser of the Prometheus text exposition format (version 0.0.4), for tests that scrape
 * /metrics: `# HELP` / `# TYPE` lines and samples `name{label="value",...} value [timestamp]`.
 */

export interface Sample {
  name: string
  labels: Record<string, string>
  value: number
}

export interface Exposition {
  samples: Sample[]
  /** Metric family name → type (counter, gauge, histogram, summary, untyped). */
  types: Map<string, string>
  help: Map<string, string>
}

/** Go's ParseFloat, as Prometheus reads values: NaN and Inf in any case (prom-client writes Nan). */
const parseValue = (text: string): number => {
  switch (text.toLowerCase()) {
    case '+inf':
    case 'inf':
      return Infinity
    case '-inf':
      return -Infinity
    case 'nan':
      return NaN
    default: {
      const n = Number(text)
      if (text === '' || Number.isNaN(n)) throw new Error(`not a sample value: "${text}"`)
      return n
    }
  }
}

/** Parses `{a="x",b="y\"z"}` starting at `text[start] === '{'`; returns labels and the end. */
function parseLabels(text: string, start: number): { labels: Record<string, string>; end: number } {
  const labels: Record<string, string> = {}
  let i = start + 1
  for (;;) {
    while (text[i] === ' ' || text[i] === ',') i++
    if (text[i] === '}') return { labels, end: i + 1 }
    const name = /^[a-zA-Z_][a-zA-Z0-9_]*/.exec(text.slice(i))?.[0]
    if (name === undefined) throw new Error(`bad label name at ${i} in: ${text}`)
    i += name.length
    if (text[i] !== '=' || text[i + 1] !== '"') throw new Error(`expected =" at ${i} in: ${text}`)
    i += 2
    let value = ''
    for (;;) {
      const c = text[i]
      if (c === undefined) throw new Error(`unterminated label value in: ${text}`)
      i++
      if (c === '"') break
      if (c === '\\') {
        const next = text[i++]
        value += next === 'n' ? '\n' : (next ?? '')
      } else {
        value += c
      }
    }
    labels[name] = value
  }
}

export function parseExposition(text: string): Exposition {
  const result: Exposition = { samples: [], types: new Map(), help: new Map() }
  for (const raw of text.split('\n')) {
    const line = raw.trim()
    if (line === '') continue
    if (line.startsWith('#')) {
      const match = /^#\s+(HELP|TYPE)\s+(\S+)\s*(.*)$/.exec(line)
      if (match?.[1] === 'TYPE') result.types.set(match[2] ?? '', match[3] ?? '')
      else if (match?.[1] === 'HELP') result.help.set(match[2] ?? '', match[3] ?? '')
      continue
    }
    const name = /^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(line)?.[0]
    if (name === undefined) throw new Error(`not a sample line: ${line}`)
    let rest = line.slice(name.length)
    let labels: Record<string, string> = {}
    if (rest.startsWith('{')) {
      const parsed = parseLabels(rest, 0)
      labels = parsed.labels
      rest = rest.slice(parsed.end)
    }
    const [value = '', timestamp] = rest.trim().split(/\s+/)
    if (timestamp !== undefined && !/^-?\d+$/.test(timestamp)) {
      throw new Error(`bad timestamp in: ${line}`)
    }
    result.samples.push({ name, labels, value: parseValue(value) })
  }
  return result
}

/** The sum of the samples named `name` whose labels include `labels`. */
export function sumOf(
  exposition: Exposition,
  name: string,
  labels: Record<string, string> = {},
): number {
  return exposition.samples
    .filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
    .reduce((n, s) => n + s.value, 0)
}

/** Whether any sample of that name exists. */
export const has = (exposition: Exposition, name: string): boolean =>
  exposition.samples.some((s) => s.name === name)
