/// Text that came from someone else (a broker client's guest name, a process's `comm`, a
/// device's label) made safe for the administrator's terminal: every control character (C0,
/// DEL, C1, and so every escape sequence's introducer) becomes `?`, so a string cannot move
/// the cursor, retitle the window or hide what follows it.
public func printable(_ text: String) -> String {
  guard text.unicodeScalars.contains(where: isControl) else { return text }
  return String(String.UnicodeScalarView(text.unicodeScalars.map { isControl($0) ? "?" : $0 }))
}

private func isControl(_ scalar: Unicode.Scalar) -> Bool {
  scalar.value < 0x20 || (0x7f...0x9f).contains(scalar.value)
    // Bidirectional overrides and isolates reorder what the reader sees.
    || (0x202a...0x202e).contains(scalar.value) || (0x2066...0x2069).contains(scalar.value)
}
