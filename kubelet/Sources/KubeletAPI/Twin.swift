import SwiftProtobuf

/// The same bytes read as another message type: DRA v1 and v1beta1 share their messages'
/// layout (field numbers and types) under two packages. The one file here not generated.
public func twin<A: SwiftProtobuf.Message, B: SwiftProtobuf.Message>(_ message: A) throws -> B {
  try B(serializedBytes: try message.serializedBytes() as [UInt8])
}
