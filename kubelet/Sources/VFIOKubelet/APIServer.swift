import Foundation

#if canImport(FoundationNetworking)
  import FoundationNetworking
#endif

/// The few calls the plugin makes to the Kubernetes API server: read a ResourceClaim's
/// allocation; the node's ResourceSlices are `APIServerSlices`'.
/// Bearer tokens only (in-cluster service account, or a kubeconfig `token`/`tokenFile`).
/// Foundation's URLSession on Linux trusts the system's CA bundle only: the cluster CA must
/// be in it (deploy/ adds the service account's `ca.crt` at start).
public struct APIServer: Sendable {
  public let server: URL
  public let token: String?
  /// How a request reaches the server and what status it got back: URLSession, or in the
  /// unit tests an API server in memory that judges each call as the real one does.
  public typealias Transport = @Sendable (URLRequest) async throws -> (body: Data, status: Int)
  public let transport: Transport

  public init(server: URL, token: String?, transport: @escaping Transport = APIServer.urlSession) {
    self.server = server
    self.token = token
    self.transport = transport
  }

  public static let urlSession: Transport = { request in
    let (data, response) = try await URLSession.shared.data(for: request)
    return (data, (response as? HTTPURLResponse)?.statusCode ?? 0)
  }

  /// From the pod's service account, when running in a cluster.
  public static func inCluster(environment: [String: String] = ProcessInfo.processInfo.environment) -> APIServer? {
    guard let host = environment["KUBERNETES_SERVICE_HOST"], let port = environment["KUBERNETES_SERVICE_PORT"],
      let url = URL(string: "https://\(host.contains(":") ? "[\(host)]" : host):\(port)")
    else { return nil }
    let token = try? String(contentsOfFile: "/var/run/secrets/kubernetes.io/serviceaccount/token", encoding: .utf8)
    return APIServer(server: url, token: token?.trimmingCharacters(in: .whitespacesAndNewlines))
  }

  /// The first cluster's `server` and the first user's `token` (or `tokenFile`) of a kubeconfig.
  public static func kubeconfig(_ text: String) throws(KubeletError) -> APIServer {
    func value(_ key: String) -> String? {
      for line in text.split(separator: "\n") {
        let trimmed = line.trimmingCharacters(in: .whitespaces)
        guard trimmed.hasPrefix(key + ":") else { continue }
        let raw = trimmed.dropFirst(key.count + 1).trimmingCharacters(in: .whitespaces)
        return raw.trimmingCharacters(in: CharacterSet(charactersIn: "\"'"))
      }
      return nil
    }
    guard let server = value("server"), let url = URL(string: server), url.scheme != nil else {
      throw .apiServer("the kubeconfig has no cluster server")
    }
    let token =
      value("token")
      ?? value("tokenFile").flatMap { try? String(contentsOfFile: $0, encoding: .utf8) }?
      .trimmingCharacters(in: .whitespacesAndNewlines)
    return APIServer(server: url, token: token)
  }

  func request(_ path: String, method: String = "GET", body: Data? = nil, contentType: String? = nil) -> URLRequest {
    var request = URLRequest(url: server.appendingPathComponent(path))
    request.httpMethod = method
    request.httpBody = body
    request.setValue("application/json", forHTTPHeaderField: "Accept")
    if let contentType { request.setValue(contentType, forHTTPHeaderField: "Content-Type") }
    if let token { request.setValue("Bearer \(token)", forHTTPHeaderField: "Authorization") }
    return request
  }

  func send(_ request: URLRequest) async throws(KubeletError) -> Data {
    let data: Data
    let status: Int
    do { (data, status) = try await transport(request) } catch {
      throw .apiServer(
        "\(request.httpMethod ?? "GET") \(request.url?.absoluteString ?? ""): \(error.localizedDescription)")
    }
    guard (200..<300).contains(status) else {
      throw .apiServer(
        "\(request.httpMethod ?? "GET") \(request.url?.path ?? ""): HTTP \(status): \(String(decoding: data.prefix(300), as: UTF8.self))"
      )
    }
    return data
  }

  public func claim(namespace: String, name: String) async throws(KubeletError) -> Data {
    try await send(request("/apis/resource.k8s.io/v1/namespaces/\(namespace)/resourceclaims/\(name)"))
  }
}

/// Claims read from the API server.
public struct APIServerClaims: ClaimSource {
  public let api: APIServer
  public init(api: APIServer) { self.api = api }

  public func allocation(of claim: ClaimReference, driver: String) async throws(KubeletError) -> ClaimAllocation {
    let data: Data
    do { data = try await api.claim(namespace: claim.namespace, name: claim.name) } catch {
      throw .claimUnknown(uid: claim.uid, why: error.description)
    }
    return try ClaimAllocation.parse(data, driver: driver, claim: claim.uid)
  }
}
