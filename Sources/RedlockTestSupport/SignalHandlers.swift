import Dispatch
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Takes signals away from their default action and calls `handler` for each one, on a
/// dispatch queue (so the handler may do anything), until ``stop()``.
public final class SignalHandlers: Sendable {
    private let signals: [Int32]
    private let sources: Mutex<[any DispatchSourceSignal]>

    /// Starts handling `signals`.
    public init(_ signals: [Int32], handler: @escaping @Sendable (_ signal: Int32) -> Void) {
        self.signals = signals
        var sources: [any DispatchSourceSignal] = []
        for number in signals {
            _ = signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { handler(number) }
            source.resume()
            sources.append(source)
        }
        self.sources = Mutex(sources)
    }

    /// Stops handling and restores the default actions. Safe to call more than once.
    public func stop() {
        let sources = self.sources.withLock { sources in
            defer { sources = [] }
            return sources
        }
        guard !sources.isEmpty else { return }
        for source in sources { source.cancel() }
        for number in signals { _ = signal(number, SIG_DFL) }
    }
}
