import Foundation
import PCI
import VFIOHost

#if canImport(FoundationXML)
  import FoundationXML
#endif

/// What the hook needs of a libvirt domain's XML (the definition libvirtd hands a hook on
/// stdin): its name and UUID, the host PCI functions it takes, and whether swift-vfio keeps its
/// groups reserved while it is stopped. Read with Foundation's `XMLParser`, namespaces on.
public struct DomainDefinition: Sendable, Equatable {
  /// A host PCI function the domain is given: `<hostdev mode='subsystem' type='pci'>`, or an
  /// SR-IOV VF as `<interface type='hostdev'>`.
  public struct HostDevice: Sendable, Equatable, CustomStringConvertible {
    public let address: PCIAddress
    /// libvirt binds a managed device to vfio-pci itself and binds it back when the domain stops.
    public let managed: Bool
    /// `hostdev` or `interface`.
    public let element: String

    public init(address: PCIAddress, managed: Bool, element: String = "hostdev") {
      self.address = address
      self.managed = managed
      self.element = element
    }

    public var description: String { "\(address) (<\(element)> managed='\(managed ? "yes" : "no")')" }
  }

  public let name: String
  public let uuid: String?
  public let hostDevices: [HostDevice]
  /// `<metadata><vfio:groups xmlns:vfio="…" keep="reserved"/></metadata>`: when the domain
  /// stops, its groups stay detached and reserved for it instead of going back to the host.
  public let keepReserved: Bool

  /// The namespace of swift-vfio's element in a domain's `<metadata>`.
  public static let metadataNamespace = "https://swift-vfio.dev/xmlns/libvirt/1"

  /// The largest definition read: libvirt's own are a few KiB; this bounds a hostile stdin.
  public static let maximumSize = 4 << 20

  public var pciAddresses: [PCIAddress] { hostDevices.map(\.address) }

  public static func parse(_ data: Data) throws(DomainDefinitionError) -> DomainDefinition {
    guard data.count <= maximumSize else { throw .tooLarge(data.count) }
    let reader = DomainReader()
    let parser = XMLParser(data: data)
    parser.shouldProcessNamespaces = true
    parser.shouldResolveExternalEntities = false
    parser.delegate = reader
    let parsed = parser.parse()
    if let failure = reader.failure { throw failure }
    guard parsed else {
      let why = parser.parserError.map { ($0 as NSError).localizedDescription } ?? "not well-formed"
      throw .malformed(line: parser.lineNumber, why: why)
    }
    // libxml2 through XMLParser reports a document cut short as parsed: its root must have ended.
    guard let root = reader.rootElement else { throw .malformed(line: parser.lineNumber, why: "no element at all") }
    guard reader.rootEnded else { throw .malformed(line: parser.lineNumber, why: "the document ends before </\(printable(root))>") }
    guard reader.sawDomain else { throw .notADomain(root) }
    guard let name = reader.name, !name.isEmpty else { throw .missing("<name>") }
    return DomainDefinition(
      name: name, uuid: reader.uuid, hostDevices: reader.devices, keepReserved: reader.keepReserved)
  }
}

/// Why a domain definition could not be read; the hook then changes nothing.
public enum DomainDefinitionError: Error, Equatable, CustomStringConvertible {
  case tooLarge(Int)
  case malformed(line: Int, why: String)
  case notADomain(String)
  case missing(String)
  case badAddress(String)
  case badMetadata(String)

  public var description: String {
    switch self {
    case .tooLarge(let size):
      return "the domain XML is \(size) bytes, more than the \(DomainDefinition.maximumSize) a definition may have"
    case .malformed(let line, let why): return "the domain XML is not well-formed (line \(line)): \(why)"
    case .notADomain(let root): return "the XML is not a libvirt domain (its root element is <\(printable(root))>)"
    case .missing(let what): return "the domain XML has no \(what)"
    case .badAddress(let why): return "a PCI host device's <source><address>: \(why)"
    case .badMetadata(let why): return "swift-vfio's <metadata> element: \(why)"
    }
  }
}

/// Collects what `DomainDefinition` needs, by element path; anything else is skipped.
private final class DomainReader: NSObject, XMLParserDelegate {
  var path: [String] = []
  var rootElement: String?
  var sawDomain = false
  var rootEnded = false
  var name: String?
  var uuid: String?
  var text = ""
  var devices: [DomainDefinition.HostDevice] = []
  var keepReserved = false
  var failure: DomainDefinitionError?
  /// The PCI host device being read: its element and managed attribute, until its source address.
  var pending: (element: String, managed: Bool)?

  func parser(
    _ parser: XMLParser, didStartElement element: String, namespaceURI: String?, qualifiedName: String?,
    attributes: [String: String] = [:]
  ) {
    if path.isEmpty {
      rootElement = element
      sawDomain = element == "domain" && (namespaceURI ?? "").isEmpty
    }
    path.append(element)
    text = ""
    guard sawDomain else { return }
    switch path {
    case ["domain", "devices", "hostdev"]:
      // libvirt's default mode is subsystem; capabilities hostdevs are not PCI functions.
      if (attributes["mode"] ?? "subsystem") == "subsystem", attributes["type"] == "pci" {
        pending = ("hostdev", attributes["managed"] == "yes")
      }
    case ["domain", "devices", "interface"]:
      if attributes["type"] == "hostdev" { pending = ("interface", attributes["managed"] == "yes") }
    case ["domain", "devices", "hostdev", "source", "address"], ["domain", "devices", "interface", "source", "address"]:
      guard let device = pending else { return }
      // An interface's source address may be of another type; a hostdev's type is optional.
      guard (attributes["type"] ?? "pci") == "pci" else { return }
      do {
        devices.append(.init(address: try Self.address(attributes), managed: device.managed, element: device.element))
      } catch {
        fail(error, parser)
      }
      pending = nil
    case ["domain", "metadata", "groups"] where namespaceURI == DomainDefinition.metadataNamespace:
      switch attributes["keep"] {
      case "reserved": keepReserved = true
      case "none", nil: keepReserved = false
      case let other?:
        fail(.badMetadata("keep='\(printable(other))': expected keep='reserved' or keep='none'"), parser)
      }
    default: break
    }
  }

  func parser(_ parser: XMLParser, foundCharacters string: String) { text += string }

  func parser(_ parser: XMLParser, didEndElement element: String, namespaceURI: String?, qualifiedName: String?) {
    if sawDomain {
      switch path {
      case ["domain", "name"]: name = text.trimmingCharacters(in: .whitespacesAndNewlines)
      case ["domain", "uuid"]: uuid = text.trimmingCharacters(in: .whitespacesAndNewlines)
      case ["domain", "devices", "hostdev"], ["domain", "devices", "interface"]: pending = nil
      default: break
      }
    }
    path.removeLast()
    if path.isEmpty { rootEnded = true }
    text = ""
  }

  func fail(_ error: DomainDefinitionError, _ parser: XMLParser) {
    if failure == nil { failure = error }
    parser.abortParsing()
  }

  /// domain, bus, slot and function as libvirt reads them: strtoul with base 0 (0x… hex,
  /// 0… octal, else decimal), each absent one 0.
  static func address(_ attributes: [String: String]) throws(DomainDefinitionError) -> PCIAddress {
    func number(_ name: String, max: UInt32) throws(DomainDefinitionError) -> UInt32 {
      guard let text = attributes[name] else { return 0 }
      let trimmed = text.trimmingCharacters(in: .whitespaces)
      let value: UInt32?
      if trimmed.lowercased().hasPrefix("0x") {
        value = UInt32(trimmed.dropFirst(2), radix: 16)
      } else if trimmed.count > 1, trimmed.hasPrefix("0") {
        value = UInt32(trimmed.dropFirst(), radix: 8)
      } else {
        value = UInt32(trimmed, radix: 10)
      }
      guard let value, value <= max else {
        throw .badAddress("\(name)='\(printable(text))' is not a number from 0 to 0x\(String(max, radix: 16))")
      }
      return value
    }
    return PCIAddress(
      domain: try number("domain", max: 0xFFFF_FFFF), bus: UInt8(try number("bus", max: 0xFF)),
      device: UInt8(try number("slot", max: 0x1F)), function: UInt8(try number("function", max: 7)))
  }
}
