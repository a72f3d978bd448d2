import Glibc
import VFIOManagerTestSupport
import VFIOTestSupport

/// How one run of a command ended.
enum Outcome: Equatable, CustomStringConvertible {
  case exited(Int32)
  case signalled(Int32)
  case timedOut(seconds: Double)

  var description: String {
    switch self {
    case .exited(let code): "exit \(code)"
    case .signalled(let signal): "killed by signal \(signal) (\(String(cString: strsignal(signal))))"
    case .timedOut(let seconds): "no answer in \(seconds) s (hang)"
    }
  }
}

/// What one command printed and how it ended.
struct RunResult {
  var outcome: Outcome
  var stdout: [UInt8]
  var stderr: [UInt8]
}

/// Runs a program with its output in files (a pipe could fill and stall it), killing it
/// after `timeout` seconds.
func runProgram(_ executable: String, _ arguments: [String], timeout: Double, scratch: String) -> RunResult {
  let outPath = scratch + "/stdout"
  let errPath = scratch + "/stderr"
  var actions = posix_spawn_file_actions_t()
  posix_spawn_file_actions_init(&actions)
  defer { posix_spawn_file_actions_destroy(&actions) }
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
  posix_spawn_file_actions_addopen(&actions, 1, outPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
  posix_spawn_file_actions_addopen(&actions, 2, errPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
  let argv = ([executable] + arguments).map { strdup($0) } + [nil]
  defer { for pointer in argv { free(pointer) } }
  var pid: pid_t = 0
  let spawned = posix_spawn(&pid, executable, &actions, nil, argv, environ)
  guard spawned == 0 else {
    return RunResult(outcome: .exited(127), stdout: [], stderr: Array("posix_spawn: \(spawned)".utf8))
  }
  let start = monotonicSeconds()
  var status: Int32 = 0
  var outcome: Outcome?
  while outcome == nil {
    let waited = waitpid(pid, &status, WNOHANG)
    if waited == pid {
      // The wait(2) status layout: low 7 bits the signal, next byte the exit code.
      outcome = status & 0x7F == 0 ? .exited((status >> 8) & 0xFF) : .signalled(status & 0x7F)
    } else if waited < 0 && errno != EINTR {
      outcome = .exited(127)
    } else if monotonicSeconds() - start > timeout {
      kill(pid, SIGKILL)
      waitpid(pid, &status, 0)
      outcome = .timedOut(seconds: timeout)
    } else {
      usleep(1000)
    }
  }
  return RunResult(outcome: outcome!, stdout: readFile(outPath), stderr: readFile(errPath))
}

func readFile(_ path: String, limit: Int = 16 << 20) -> [UInt8] {
  let fd = open(path, O_RDONLY | O_CLOEXEC)
  guard fd >= 0 else { return [] }
  defer { close(fd) }
  var result: [UInt8] = []
  var buffer = [UInt8](repeating: 0, count: 65536)
  while result.count < limit {
    let got = read(fd, &buffer, buffer.count)
    guard got > 0 else { break }
    result += buffer[0..<got]
  }
  return result
}
