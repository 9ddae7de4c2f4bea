import Redlock
import ServiceLifecycle

/// A ``Redlock/RedlockClient`` as a swift-service-lifecycle `Service`: add it to the app's
/// `ServiceGroup`, and the client is shut down (its connections closed, its threads stopped) on
/// graceful shutdown (SIGTERM with the rest of the app). A group shuts its services down in
/// reverse order: list the client before the services that lock, so it closes after them.
///
/// ```swift
/// let client = try RedlockClient(endpoints: endpoints)
/// let group = ServiceGroup(
///     services: [RedlockClientService(client), app],   // app stops first, then the client
///     gracefulShutdownSignals: [.sigterm],
///     logger: logger
/// )
/// try await group.run()
/// ```
///
/// Apps that do not use swift-service-lifecycle call ``Redlock/RedlockClient/shutdown()``
/// themselves and need not depend on this module.
public struct RedlockClientService: Service {
    /// The client this service shuts down.
    public let client: RedlockClient

    /// Wraps `client`.
    public init(_ client: RedlockClient) {
        self.client = client
    }

    /// Waits for graceful shutdown (or cancellation), then shuts the client down.
    public func run() async throws {
        try? await gracefulShutdown()
        await client.shutdown()
    }
}
