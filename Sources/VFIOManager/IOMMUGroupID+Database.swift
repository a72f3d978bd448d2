import GRDB
import PCI
import VFIOHost

/// The ledger stores a group's number as the integer it is, as it did before the type existed.
extension IOMMUGroupID: DatabaseValueConvertible {
  public var databaseValue: DatabaseValue { rawValue.databaseValue }

  public static func fromDatabaseValue(_ value: DatabaseValue) -> IOMMUGroupID? {
    Int.fromDatabaseValue(value).map(IOMMUGroupID.init(rawValue:))
  }
}
