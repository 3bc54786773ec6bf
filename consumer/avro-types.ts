import type avro from 'avsc'

/** Small facts about avsc types shared by the JS pre-scan and the native decode program. */

type Field = avro.types.Field

/** The smallest encoding of a value of `type`, in bytes (a lower bound for recursive types). */
export function minBytes(type: avro.Type, seen = new Set<avro.Type>()): number {
  switch (baseTypeName(type)) {
    case 'null':
      return 0
    case 'float':
      return 4
    case 'double':
      return 8
    case 'fixed':
      return (type as avro.types.FixedType).size
    case 'record':
    case 'error': {
      if (seen.has(type)) return 0
      seen.add(type)
      let total = 0
      for (const field of (type as avro.types.RecordType).fields)
        total += minBytes(field.type, seen)
      seen.delete(type)
      return total
    }
    case 'union:unwrapped':
    case 'union:wrapped': {
      const branches = (type as avro.types.UnwrappedUnionType).types
      return 1 + Math.min(...branches.map((branch) => minBytes(branch, seen)))
    }
    case 'logical':
      return minBytes((type as avro.types.LogicalType).underlyingType, seen)
    default:
      // boolean, int, long, bytes, string, enum, array, map: at least one byte.
      return 1
  }
}

export function baseTypeName(type: avro.Type): string {
  const name = type.typeName
  if (name.startsWith('logical:')) return 'logical'
  if (name === 'abstract:long') return 'long'
  return name
}

/** Whether a reader field reads this writer field (by name or alias). */
export const matches = (readerField: Field, writerField: Field): boolean =>
  readerField.name === writerField.name || readerField.aliases.includes(writerField.name)
