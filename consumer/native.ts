import path from 'node:path'
import type * as Binding from '../native/index.js'
import { packageRoot } from './paths'

/**
 * The only module that loads the napi-rs binding (`native/`, built by `npm run build:native`).
 * Loaded by path from the package root so it works from source and from dist/ alike.
 */
// eslint-disable-next-line @typescript-eslint/no-require-imports
const binding = require(path.join(packageRoot, 'native', 'index.js')) as typeof Binding

export const PartitionAggregator = binding.PartitionAggregator
export type PartitionAggregator = Binding.PartitionAggregator
export type {
  AggregatorConfig,
  AggregatorStats,
  ClosedWindows,
  IngestResult,
  SampleRows,
  WindowStates,
} from '../native/index.js'
