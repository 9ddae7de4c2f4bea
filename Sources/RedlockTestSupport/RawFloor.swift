import RedlockTransport

/// What a lock+unlock cycle cannot avoid sending, for benchmarks to measure the library
/// against: `SET NX PX` and a compare-and-delete, with nothing of the algorithm around them.
public enum RawFloor {
    /// Compare-and-delete, as a release does it: 1 deleted, 0 another holder's value, -1 no key.
    /// Written here, not taken from the library, so the floor depends on nothing internal to it.
    public static let releaseScript = RedisScript(
        """
        local held = redis.call('GET', KEYS[1])
        if held == ARGV[1] then
            return redis.call('DEL', KEYS[1])
        end
        if held == false then
            return -1
        end
        return 0
        """
    )
}
