@testable import RedlockTransport
import Testing

@Suite("Secure random bytes")
struct SecureRandomTests {
    @Test("every length gets that many bytes, past one call's 256 too", arguments: [0, 1, 7, 8, 16, 255, 256, 257, 4_096])
    func lengths(count: Int) {
        #expect(secureRandomBytes(count).count == count)
    }

    @Test("the bytes differ from call to call and cover the byte values")
    func spread() {
        let draws = (0..<64).map { _ in secureRandomBytes(16) }
        #expect(Set(draws).count == draws.count)
        // 1,024 random bytes take about 252 of the 256 values on average; fewer than 200 would
        // take a broken generator.
        #expect(Set(draws.joined()).count > 200)
        // A long draw is random past the first 256 bytes as well (1,096 bytes: about 254
        // values on average).
        let long = secureRandomBytes(4_096)
        #expect(Set(long[3_000...]).count > 200)
    }
}
