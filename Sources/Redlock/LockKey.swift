#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A lock name as the bytes Redis sees, for the client's per-name tables (release watching,
/// single-flight gates).
///
/// Swift's `String` equality treats canonically equivalent names as equal (`"caf\u{E9}"` and
/// `"cafe\u{301}"`), but Redis compares bytes: they are two keys, two locks. Keying local state by
/// the UTF-8 bytes keeps two different keys from ever sharing it. Comparing and hashing read the
/// string's UTF-8 view without copying it.
///
/// The hash of the bytes is computed once, when the key is made: a lookup combines that word.
/// A lock makes its key once (``DistributedLock/key``), and a `lock()` and `unlock()` look
/// their name up about six times.
struct LockKey: Hashable, Sendable {
    let name: String
    private let bytesHash: Int

    init(_ name: String) {
        self.name = name
        var hasher = Hasher()
        let hashed: Void? = name.utf8.withContiguousStorageIfAvailable { bytes in
            hasher.combine(bytes: UnsafeRawBufferPointer(bytes))
        }
        if hashed == nil {
            for byte in name.utf8 { hasher.combine(byte) }
        }
        hasher.combine(name.utf8.count)
        bytesHash = hasher.finalize()
    }

    static func == (lhs: LockKey, rhs: LockKey) -> Bool {
        sameBytes(lhs.name, rhs.name)
    }

    /// Whether two names are one key in Redis: the same UTF-8 bytes (not Swift's canonical
    /// equivalence, which `==` on `String` uses).
    static func sameBytes(_ lhs: String, _ rhs: String) -> Bool {
        // One comparison of the two UTF-8 buffers (native strings are contiguous already, so
        // withUTF8 copies nothing). Walking the two views through their iterators cost about
        // 1,100 instructions for a 15-byte name (callgrind), and a lock() and unlock() look
        // their name up four times.
        var left = lhs
        var right = rhs
        return left.withUTF8 { leftBytes in
            right.withUTF8 { rightBytes in
                guard leftBytes.count == rightBytes.count else { return false }
                guard let leftStart = leftBytes.baseAddress, let rightStart = rightBytes.baseAddress else { return true }
                return memcmp(leftStart, rightStart, leftBytes.count) == 0
            }
        }
    }

    func hash(into hasher: inout Hasher) {
        hasher.combine(bytesHash)
    }
}

extension [UInt8] {
    /// Whether the array holds exactly `other`'s bytes: one `memcmp` when `other` is contiguous
    /// (a native string's UTF-8 view, an array), else element by element. The generic
    /// `elementsEqual` walks a string's UTF-8 view through its iterator: about 1,100
    /// instructions per comparison of a lock value (callgrind), on every `unlock()`.
    func hasSameBytes(as other: some Collection<UInt8>) -> Bool {
        let compared: Bool? = other.withContiguousStorageIfAvailable { theirs in
            withUnsafeBufferPointer { mine in
                guard mine.count == theirs.count else { return false }
                guard let left = mine.baseAddress, let right = theirs.baseAddress else { return true }
                return memcmp(left, right, mine.count) == 0
            }
        }
        return compared ?? elementsEqual(other)
    }
}
