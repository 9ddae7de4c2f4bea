import ArgumentParser
import CSupervise

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// `redlock-worker subreaper -- COMMAND…`: runs a command below a child subreaper, as the
/// watchdog of `redlock run` does: what the command's processes leave behind when they die is
/// reparented to this process, not to init. Once the command has exited it reaps until no
/// child is left (as the watchdog does, which stays until everything below it is gone), then
/// exits with the command's status.
struct Subreaper: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a command below a child subreaper (as redlock run's watchdog is) and exit with its status."
    )

    @Argument(parsing: .captureForPassthrough, help: "The command and its arguments.")
    var command: [String]

    func run() throws {
        let words = command.first == "--" ? Array(command.dropFirst()) : command
        guard !words.isEmpty else { throw ValidationError("no command given") }
        let result = redlock_become_subreaper()
        guard result == 0 else { throw ValidationError("prctl(PR_SET_CHILD_SUBREAPER): \(String(cString: strerror(result)))") }
        let argv = words.map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        guard !argv.dropLast().contains(nil) else { throw ValidationError("out of memory") }
        var pid: pid_t = 0
        let spawned = posix_spawnp(&pid, words[0], nil, nil, argv, environ)
        guard spawned == 0 else { throw ValidationError("cannot start \(words[0]): \(String(cString: strerror(spawned)))") }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 {
            guard errno == EINTR else { throw ValidationError("waitpid: \(String(cString: strerror(errno)))") }
        }
        var other: Int32 = 0
        while waitpid(-1, &other, 0) > 0 || errno == EINTR {}
        let exited = status & 0x7f == 0
        throw ExitCode(exited ? (status >> 8) & 0xff : 128 + (status & 0x7f))
    }
}
