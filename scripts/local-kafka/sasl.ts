// SASL/SCRAM: user types, enabled mechanisms, SASL_PLAINTEXT listener properties, user checks.

export interface LocalSaslOptions {
  /** At least one. Names and passwords: letters, digits and `._-` only (they go into configs). */
  users: LocalSaslUser[]
  /** Port of the SASL_PLAINTEXT listener. Default: a free port picked at run time. */
  port?: number
}

export interface LocalSaslUser {
  username: string
  password: string
}

/** Mechanisms the SASL_PLAINTEXT listener enables (kafkajs names them in lower case). */
export const LOCAL_SASL_MECHANISMS = ['SCRAM-SHA-256', 'SCRAM-SHA-512', 'PLAIN'] as const

/**
 * SASL on the SASL_PLAINTEXT listener only: no authorizer, so an authenticated user may do
 * anything. SCRAM users are in the cluster metadata (formatted in, see formatStorage); PLAIN
 * users are `user_<name>="<password>"` entries of the listener's PlainLoginModule.
 */
export function saslProperties(users: LocalSaslUser[]): string[] {
  const plainUsers = users.map((u) => ` user_${u.username}="${u.password}"`).join('')
  return [
    `sasl.enabled.mechanisms=${LOCAL_SASL_MECHANISMS.join(',')}`,
    'listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=' +
      'org.apache.kafka.common.security.scram.ScramLoginModule required;',
    'listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=' +
      'org.apache.kafka.common.security.scram.ScramLoginModule required;',
    'listener.name.sasl_plaintext.plain.sasl.jaas.config=' +
      `org.apache.kafka.common.security.plain.PlainLoginModule required${plainUsers};`,
  ]
}

/** Values end up in .properties, JAAS and `--add-scram` syntax: keep them plain. */
export function assertSaslUsers(users: LocalSaslUser[]): void {
  if (users.length === 0) throw new Error('sasl.users: at least one user is needed')
  for (const { username, password } of users) {
    if (!/^[A-Za-z0-9._-]+$/.test(username) || !/^[A-Za-z0-9._-]+$/.test(password)) {
      throw new Error(
        `sasl.users: "${username}": names and passwords may only hold letters, digits and ._-`,
      )
    }
  }
}
