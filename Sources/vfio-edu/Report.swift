/// The outcome of one step of the edu exercise.
struct Check: Sendable, Equatable {
  var name: String
  var passed: Bool
  var detail: String
}

/// Everything vfio-edu found, rendered as a table or JSON by the pure functions below.
struct Report: Sendable, Equatable {
  var device: String
  var backend: String
  var checks: [Check] = []
  /// Facts that are not pass/fail (e.g. VFIO_DEVICE_RESET being unsupported by edu).
  var notes: [String] = []
  /// Set when the run stopped early.
  var error: String?

  var passed: Bool { error == nil && !checks.isEmpty && checks.allSatisfy(\.passed) }

  mutating func check(_ name: String, _ passed: Bool, _ detail: String) {
    checks.append(Check(name: name, passed: passed, detail: detail))
  }
}

enum Render {
  static func text(_ r: Report) -> String {
    var lines = ["\(r.device) via \(r.backend)"]
    let width = (r.checks.map(\.name.count).max() ?? 0) + 2
    for c in r.checks {
      let pad = String(repeating: " ", count: max(1, width - c.name.count))
      lines.append("  \(c.passed ? "PASS" : "FAIL")  \(c.name)\(pad)\(c.detail)")
    }
    for n in r.notes { lines.append("  note  \(n)") }
    if let e = r.error { lines.append("  error \(e)") }
    let failed = r.checks.filter { !$0.passed }.count
    if r.passed {
      lines.append("all \(r.checks.count) checks passed")
    } else if r.checks.isEmpty {
      lines.append("FAILED before any check ran")
    } else {
      lines.append(
        "\(failed) of \(r.checks.count) checks failed\(r.error == nil ? "" : "; stopped early")")
    }
    return lines.joined(separator: "\n")
  }

  static func json(_ r: Report) -> String {
    let checks = r.checks.map {
      "{\"name\":\(quote($0.name)),\"passed\":\($0.passed),\"detail\":\(quote($0.detail))}"
    }
    var fields = [
      "\"device\":\(quote(r.device))", "\"backend\":\(quote(r.backend))", "\"passed\":\(r.passed)",
      "\"checks\":[\(checks.joined(separator: ","))]",
      "\"notes\":[\(r.notes.map(quote).joined(separator: ","))]",
    ]
    fields.append("\"error\":\(r.error.map(quote) ?? "null")")
    return "{\(fields.joined(separator: ","))}"
  }

  static func quote(_ s: String) -> String {
    var out = "\""
    for u in s.unicodeScalars {
      switch u {
      case "\"": out += "\\\""
      case "\\": out += "\\\\"
      case "\n": out += "\\n"
      case "\t": out += "\\t"
      case "\r": out += "\\r"
      default:
        if u.value < 0x20 {
          let h = String(u.value, radix: 16)
          out += "\\u" + String(repeating: "0", count: 4 - h.count) + h
        } else {
          out.unicodeScalars.append(u)
        }
      }
    }
    return out + "\""
  }
}
