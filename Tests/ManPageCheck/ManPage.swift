import ArgumentParser

/// What the man page `page` (mdoc, as swift-argument-parser's generate-manual writes it) lacks of
/// `root`'s subcommands and their options: "NAME" or "NAME --OPTION", one per gap.
public func manPageGaps(_ page: String, _ root: any ParsableCommand.Type) -> [String] {
  var gaps: [String] = []
  for command in root.configuration.subcommands {
    guard let name = command.configuration.commandName else { continue }
    if !page.contains(".It Em \(name)\n") { gaps.append(name) }
    let options = command.helpMessage().split(whereSeparator: { " ,\n[]<>".contains($0) })
      .filter { $0.hasPrefix("--") && $0.count > 2 }
    for option in Set(options).sorted() where !page.contains("Fl -\(option.dropFirst(2))") {
      gaps.append("\(name) \(option)")
    }
  }
  return gaps
}
