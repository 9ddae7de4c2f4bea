import Testing

@Suite("Fault injection")
struct FaultTests {
    @Test("the fault suite is present")
    func present() {
        #expect(Bool(true))
    }
}
