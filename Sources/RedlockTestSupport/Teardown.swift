/// Runs `body`, then `teardown` — also when `body` throws — and returns or rethrows what `body`
/// did: an asynchronous `defer` for servers, clients and processes.
public func withTeardown<T>(
    _ body: () async throws -> T,
    teardown: () async -> Void
) async throws -> T {
    let result: Result<T, any Error>
    do {
        result = .success(try await body())
    } catch {
        result = .failure(error)
    }
    await teardown()
    return try result.get()
}
