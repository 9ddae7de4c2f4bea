// The transport's public types are part of this module's API: `import Redlock` is enough to
// name `RedisEndpoint`, `RedisConnectionConfiguration`, `RedisConnection` and `RedisError` (and
// to reach their members with the upcoming `MemberImportVisibility` feature on). What only the
// library itself may call on a connection (sending raw commands) is `package`.
@_exported import RedlockTransport
