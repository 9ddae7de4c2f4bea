/// A lock name as the bytes Redis sees, for the client's per-name tables (release watching,
/// single-flight gates).
///
/// Swift's `String` equality treats canonically equivalent names as equal (`"caf\u{E9}"` and
/// `"cafe\u{301}"`), but Redis compares bytes: they are two keys, two locks. Keying local state by
/// the UTF-8 bytes keeps two different keys from ever sharing it. Comparing and hashing read the
/// string's UTF-8 view without copying it.
struct LockKey: Hashable, Sendable {
    let name: String

    init(_ name: String) {
        self.name = name
    }

    static func == (lhs: LockKey, rhs: LockKey) -> Bool {
        lhs.name.utf8.elementsEqual(rhs.name.utf8)
    }

    func hash(into hasher: inout Hasher) {
        let hashed: Void? = name.utf8.withContiguousStorageIfAvailable { bytes in
            hasher.combine(bytes: UnsafeRawBufferPointer(bytes))
        }
        if hashed == nil {
            for byte in name.utf8 { hasher.combine(byte) }
        }
        hasher.combine(name.utf8.count)
    }
}
