import Histogram

/// One measured operation of a scenario: a lock+unlock cycle, a raw fan-out, … It returns the
/// latency to record when only part of it is measured, or nil to record the whole operation.
typealias BenchOperation = @Sendable () async throws -> Duration?

/// What one scenario measured: per-operation latencies, how many operations completed, how many
/// failed, and the wall time they took.
struct BenchMeasurement: Sendable {
    /// Latencies of successful operations, in nanoseconds (1 µs resolution is plenty here).
    var latencies = Histogram<UInt32>(lowestDiscernibleValue: 1_000, highestTrackableValue: 120_000_000_000, numberOfSignificantValueDigits: .three)
    var operations = 0
    var errors = 0
    var firstError: String?
    var elapsed: Duration = .zero

    mutating func record(_ latency: Duration) {
        latencies.record(UInt64(clamping: max(latency.nanosecondCount, 1)))
        operations += 1
    }

    mutating func recordError(_ error: any Error) {
        errors += 1
        if firstError == nil { firstError = "\(error)" }
    }

    /// Adds another worker's or slice's samples (wall time is added separately).
    mutating func merge(_ other: BenchMeasurement) {
        latencies.add(other.latencies)
        operations += other.operations
        errors += other.errors
        if firstError == nil { firstError = other.firstError }
    }

    /// The latency at `percentile` (0–100) in microseconds, or nil without samples.
    func microseconds(atPercentile percentile: Double) -> Double? {
        guard latencies.totalCount > 0 else { return nil }
        return Double(latencies.valueAtPercentile(percentile)) / 1_000
    }

    /// Completed operations per second of wall time.
    var operationsPerSecond: Double? {
        let seconds = elapsed.seconds
        guard seconds > 0, operations > 0 else { return nil }
        return Double(operations) / seconds
    }
}

/// Runs workloads for fixed wall-clock durations and measures them.
enum BenchRunner {
    /// Runs one workload — one operation per worker, each worker in its own task looping on its
    /// operation — until `duration` has passed or the task is cancelled.
    static func run(_ workers: [BenchOperation], for duration: Duration) async -> BenchMeasurement {
        let start = ContinuousClock.now
        let deadline = start.advanced(by: duration)
        var measurement: BenchMeasurement
        if workers.count == 1, let only = workers.first {
            measurement = await loop(only, until: deadline)
        } else {
            measurement = await withTaskGroup(of: BenchMeasurement.self) { group in
                for worker in workers {
                    group.addTask { await loop(worker, until: deadline) }
                }
                var merged = BenchMeasurement()
                for await part in group { merged.merge(part) }
                return merged
            }
        }
        measurement.elapsed = start.duration(to: .now)
        return measurement
    }

    /// Runs several workloads in alternating slices, so that drift on the machine (other load,
    /// CPU frequency, the nodes' memory) falls on each of them alike, after an unmeasured warm-up
    /// of each. Every workload gets `duration` of measured time in all.
    ///
    /// With `prepare`, each slice first calls it with the workload's index (e.g. to stop or resume
    /// a node) and then runs the workload unmeasured for `settle`, so the change's transient is
    /// not measured.
    static func interleave(
        _ workloads: [[BenchOperation]],
        each duration: Duration,
        slice: Duration = .seconds(1),
        warmUp: Duration = .milliseconds(300),
        settle: Duration = .zero,
        prepare: (@Sendable (Int) async throws -> Void)? = nil
    ) async throws -> [BenchMeasurement] {
        try await interleave(
            workloads.map(BenchWorkload.operations), each: duration, slice: slice, warmUp: warmUp, settle: settle, prepare: prepare
        )
    }

    /// ``interleave(_:each:slice:warmUp:settle:prepare:)-([[BenchOperation]],_,_,_,_,_)`` for
    /// workloads of any kind (the raw C floor runs as a process).
    static func interleave(
        _ workloads: [BenchWorkload],
        each duration: Duration,
        slice: Duration = .seconds(1),
        warmUp: Duration = .milliseconds(300),
        settle: Duration = .zero,
        prepare: (@Sendable (Int) async throws -> Void)? = nil
    ) async throws -> [BenchMeasurement] {
        for index in workloads.indices where !Task.isCancelled {
            try await prepare?(index)
            _ = await workloads[index].run(warmUp)
        }
        let sliceCount = max(1, Int((duration.seconds / slice.seconds).rounded()))
        let sliceDuration = duration / sliceCount
        var results = Array(repeating: BenchMeasurement(), count: workloads.count)
        for round in 0..<sliceCount where !Task.isCancelled {
            // Alternate the order so no workload always runs right after another one.
            let order = round.isMultiple(of: 2) ? Array(workloads.indices) : workloads.indices.reversed()
            for index in order where !Task.isCancelled {
                if let prepare {
                    try await prepare(index)
                    if settle > .zero { _ = await workloads[index].run(settle) }
                }
                let part = await workloads[index].run(sliceDuration)
                results[index].merge(part)
                results[index].elapsed += part.elapsed
            }
        }
        return results
    }

    /// One worker: the operation back to back until the deadline.
    private static func loop(_ operation: BenchOperation, until deadline: ContinuousClock.Instant) async -> BenchMeasurement {
        var measurement = BenchMeasurement()
        var now = ContinuousClock.now
        while now < deadline, !Task.isCancelled {
            let begin = now
            do {
                let measured = try await operation()
                now = .now
                measurement.record(measured ?? begin.duration(to: now))
            } catch {
                now = .now
                if !Task.isCancelled { measurement.recordError(error) }
            }
        }
        return measurement
    }
}

extension Duration {
    /// The duration in nanoseconds, saturating.
    var nanosecondCount: Int64 {
        let (seconds, attoseconds) = components
        let (scaled, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        if overflow { return seconds < 0 ? .min : .max }
        return scaled.addingReportingOverflow(attoseconds / 1_000_000_000).partialValue
    }

    /// The duration in seconds as a floating-point number.
    var seconds: Double {
        Double(components.seconds) + Double(components.attoseconds) / 1e18
    }
}
