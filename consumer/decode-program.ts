import type avro from 'avsc'
import { baseTypeName, matches, minBytes } from './avro-types'

/**
 * Compiles writer schemas of `TelemetryBatch` into the node table the native decoder walks
 * (`native/src/avro.rs`, `PartitionAggregator.ingestAvro`). Schema resolution happens here, with
 * avsc's types: each node says how to walk one writer type and what the reader keeps of it (a
 * sample's series key, event time and value, the batch's source id), promotions included. Only
 * called for writer schemas avsc resolved against the reader, so every reader field is present.
 */

const op = {
  null: 0,
  boolean: 1,
  int: 2,
  long: 3,
  float: 4,
  double: 5,
  bytes: 6,
  string: 7,
  fixed: 8,
  enum: 9,
  union: 10,
  array: 11,
  map: 12,
  record: 13,
  sample: 14,
  key: 15,
  timeInt: 16,
  timeLong: 17,
  valueInt: 18,
  valueLong: 19,
  valueFloat: 20,
  valueDouble: 21,
  sourceId: 22,
} as const

/** What the reader does with a writer value. */
type Role = 'skip' | 'batch' | 'samples' | 'sample' | 'key' | 'time' | 'value' | 'sourceId'

/** Reader fields by role; a reader field not listed here must be taught to the native decoder. */
const batchFields: Record<string, Role> = { sourceId: 'sourceId', samples: 'samples' }
const sampleFields: Record<string, Role> = { seriesKey: 'key', eventTime: 'time', value: 'value' }

const valueOps: Record<string, number> = {
  int: op.valueInt,
  long: op.valueLong,
  float: op.valueFloat,
  double: op.valueDouble,
}

/** Grows as writer schemas are added; `words` is what ingestAvro takes. */
export class DecodeProgram {
  private readonly nodes: number[][] = []
  private cached: Uint32Array | undefined

  /**
   * Adds the nodes for values written with `writer` and read as `reader` (the current
   * `TelemetryBatch`); returns the root node. Throws if the reader has a field this compiler
   * does not know, or the writer a shape avsc would not have resolved.
   */
  add(writer: avro.Type, reader: avro.Type): number {
    const readerSample = field(reader, 'samples')
    const sampleType = (readerSample.type as avro.types.ArrayType).itemsType
    for (const [type, known] of [
      [reader, batchFields],
      [sampleType, sampleFields],
    ] as const) {
      const unknown = (type as avro.types.RecordType).fields.find((f) => !(f.name in known))
      if (unknown !== undefined) {
        throw new Error(`the native decoder does not know reader field '${unknown.name}'`)
      }
    }
    const records = new Map<avro.Type, Map<Role, number>>()
    const compile = (type: avro.Type, role: Role): number => {
      const base = baseTypeName(type)
      if (base === 'logical') {
        return compile((type as avro.types.LogicalType).underlyingType, role)
      }
      switch (role) {
        case 'key':
        case 'sourceId':
          expect(base, ['string', 'bytes'], role)
          return this.node(role === 'key' ? op.key : op.sourceId)
        case 'time':
          expect(base, ['int', 'long'], role)
          return this.node(base === 'int' ? op.timeInt : op.timeLong)
        case 'value':
          expect(base, ['int', 'long', 'float', 'double'], role)
          return this.node(valueOps[base] as number)
        case 'samples': {
          expect(base, ['array'], role)
          const items = (type as avro.types.ArrayType).itemsType
          return this.node(op.array, compile(items, 'sample'), minBytes(items), 1)
        }
        case 'batch':
        case 'sample':
          expect(base, ['record'], role)
          break
        case 'skip':
          break
      }
      switch (base) {
        case 'null':
        case 'boolean':
        case 'int':
        case 'long':
        case 'float':
        case 'double':
        case 'bytes':
          return this.node(op[base])
        case 'string':
          // Skipped: its bytes need not be UTF-8 (as in the JS pre-scan).
          return this.node(op.bytes)
        case 'fixed':
          return this.node(op.fixed, (type as avro.types.FixedType).size)
        case 'enum':
          return this.node(op.enum, (type as avro.types.EnumType).symbols.length)
        case 'union:unwrapped':
        case 'union:wrapped': {
          const branches = (type as avro.types.UnwrappedUnionType).types
          const at = this.reserve()
          this.fill(at, op.union, ...branches.map((b) => compile(b, 'skip')))
          return at
        }
        case 'array': {
          const items = (type as avro.types.ArrayType).itemsType
          const at = this.reserve()
          this.fill(at, op.array, compile(items, 'skip'), minBytes(items), 0)
          return at
        }
        case 'map': {
          const values = (type as avro.types.MapType).valuesType as avro.Type
          const at = this.reserve()
          this.fill(at, op.map, compile(values, 'skip'), minBytes(values))
          return at
        }
        case 'record':
        case 'error': {
          let byRole = records.get(type)
          if (byRole === undefined) records.set(type, (byRole = new Map<Role, number>()))
          const known = byRole.get(role)
          if (known !== undefined) return known
          // Reserved before the fields are compiled, so that a recursive reference finds it.
          const at = this.reserve()
          byRole.set(role, at)
          const roles = role === 'batch' ? batchFields : role === 'sample' ? sampleFields : {}
          const readerRecord = (
            role === 'batch' ? reader : role === 'sample' ? sampleType : null
          ) as avro.types.RecordType | null
          const fields = (type as avro.types.RecordType).fields.map((f) => {
            const readerField = readerRecord?.fields.find((r) => matches(r, f))
            return compile(
              f.type,
              readerField === undefined ? 'skip' : (roles[readerField.name] ?? 'skip'),
            )
          })
          this.fill(at, role === 'sample' ? op.sample : op.record, ...fields)
          return at
        }
        default:
          throw new Error(`cannot compile Avro type ${type.typeName}`)
      }
    }
    return compile(writer, 'batch')
  }

  /** The node table in its wire form: `[op, argCount, ...args]` per node. */
  get words(): Uint32Array {
    if (this.cached === undefined) {
      const flat: number[] = []
      for (const [code = 0, ...args] of this.nodes) flat.push(code, args.length, ...args)
      this.cached = Uint32Array.from(flat)
    }
    return this.cached
  }

  private node(code: number, ...args: number[]): number {
    const at = this.reserve()
    this.fill(at, code, ...args)
    return at
  }

  private reserve(): number {
    this.cached = undefined
    this.nodes.push([])
    return this.nodes.length - 1
  }

  private fill(at: number, code: number, ...args: number[]): void {
    this.nodes[at] = [code, ...args]
  }
}

function field(record: avro.Type, name: string): avro.types.Field {
  const found = (record as avro.types.RecordType).fields.find((f) => f.name === name)
  if (found === undefined) throw new Error(`reader has no field '${name}'`)
  return found
}

function expect(base: string, accepted: string[], role: Role): void {
  if (!accepted.includes(base)) {
    throw new Error(`the native decoder cannot read a writer ${base} as the ${role}`)
  }
}
