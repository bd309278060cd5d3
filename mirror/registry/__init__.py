"""The OCI distribution API client (one place for the HTTP library).

- `client`: `RegistryClient` (one registry host: TLS, endpoint, auth, request limit) and
  `Repository` (the API calls for one repository);
- `auth`: the WWW-Authenticate challenge, Basic, Bearer tokens cached per scope;
- `media`: media types and the parts of manifests the copy needs;
- `errors`: `RegistryError`, the one error type ("doing what: cause", `retryable`);
- `credentials`, `acr`: where credentials come from (Docker config, helpers, env, Entra ID).
"""
