import ArgumentParser
import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// This process's arguments and environment as the bytes it was given.
///
/// Swift decodes `CommandLine.arguments` and the environment as UTF-8, replacing what is not
/// valid UTF-8 with U+FFFD: a file name in Latin-1 would reach the command as another name, and
/// two lock names differing in such a byte would be one key. So redlock's own arguments must be
/// text (``requireText(exceptLast:)``), and the command's arguments and environment are passed
/// on as bytes (``lastArguments(_:)``, ``environment()``).
enum RawArguments {
    /// Throws a usage error naming the first of the arguments (all but the last `count`, which
    /// are passed on as bytes) that is not valid UTF-8.
    static func requireText(exceptLast count: Int = 0) throws {
        let own = arguments().dropLast(count).dropFirst()
        for (index, argument) in zip(1..., own) where String(validating: argument, as: UTF8.self) == nil {
            throw ValidationError(
                "argument \(index) (\(String(decoding: argument, as: UTF8.self))) is not valid UTF-8: names, nodes and durations "
                    + "are text (a lock name is the key's bytes: one Redis key for every spelling that decodes alike would not be safe)"
            )
        }
    }

    /// The last `count` arguments, as given; nil when they do not decode to `decoded` (the
    /// parser's view of them), which would mean they are not where they were looked for.
    static func lastArguments(_ decoded: [String]) -> [[UInt8]]? {
        let raw = Array(arguments().suffix(decoded.count))
        guard raw.count == decoded.count, zip(raw, decoded).allSatisfy({ String(decoding: $0, as: UTF8.self) == $1 }) else {
            return nil
        }
        return raw
    }

    /// The environment's `NAME=value` entries, as given (`/proc/self/environ`: redlock sets
    /// none of its own); nil when it cannot be read.
    static func environment() -> [[UInt8]]? {
        guard let data = FileManager.default.contents(atPath: "/proc/self/environ") else { return nil }
        return data.split(separator: 0, omittingEmptySubsequences: true).map { Array($0) }
    }

    /// Whether an environment entry sets `name`.
    static func entry(_ entry: [UInt8], sets name: String) -> Bool {
        entry.starts(with: Array((name + "=").utf8))
    }

    private static func arguments() -> [[UInt8]] {
        (0..<Int(CommandLine.argc)).map { index in CommandLine.unsafeArgv[index].map(bytes) ?? [] }
    }

    private static func bytes(_ string: UnsafeMutablePointer<CChar>) -> [UInt8] {
        Array(UnsafeRawBufferPointer(start: string, count: strlen(string)))
    }
}
