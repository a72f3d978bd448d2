import VFIOHost

/// A plain left-aligned text table; the last column is never padded. Cells are made
/// printable: several carry text from others (process names, guest names, details).
struct TextTable {
  var header: [String]
  var rows: [[String]] = []

  func render() -> String {
    let all = ([header] + rows).map { $0.map(printable) }
    var widths = [Int](repeating: 0, count: header.count)
    for row in all {
      for (i, cell) in row.enumerated() where i < widths.count { widths[i] = max(widths[i], cell.count) }
    }
    return all.map { row in
      row.enumerated().map { i, cell in
        i == row.count - 1 ? cell : cell + String(repeating: " ", count: widths[i] - cell.count)
      }.joined(separator: "  ")
    }.joined(separator: "\n") + "\n"
  }
}

/// Shortens a cell to `limit` characters, marking the cut.
func clip(_ text: String, _ limit: Int) -> String {
  text.count <= limit ? text : String(text.prefix(limit - 1)) + "…"
}
