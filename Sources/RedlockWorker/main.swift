// The worker process for cross-process tests; see Tests/RedlockFaultTests.
print("redlock-worker: not implemented yet")
