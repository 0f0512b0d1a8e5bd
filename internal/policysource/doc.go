// Package policysource reads HushSpec policies from object stores: Amazon S3
// (s3://bucket/key), Google Cloud Storage (gs://bucket/object) and Azure Blob
// Storage (azblob://account/container/blob), each through its cloud's own SDK
// and that SDK's default credentials (the AWS default chain with ECS task
// roles and IRSA, Google's Application Default Credentials with workload
// identity, Azure's DefaultAzureCredential with managed identity).
//
// A Source loads its policy (and every object its `extends` chain names, in
// the same store: relative to the object that extends, never beyond the
// bucket's root) and remembers each object's version (S3 and Azure ETag, GCS
// generation). Changed asks the store for those versions again; Watch does
// so on an interval and calls back when one differs, so that the caller
// reloads under its own hot-reload rules (a policy that does not load is
// refused and the old one stays).
//
// A `#sha256:<hex>` fragment pins the object's content: any other bytes are
// refused, and a pinned policy may not extend another object (its base
// would be unpinned).
//
// Emulators: the SDKs' own overrides point them at S3-compatible stores
// (AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, which also switch to path-style
// addressing), fake-gcs-server (STORAGE_EMULATOR_HOST) and Azurite
// (AZURE_STORAGE_CONNECTION_STRING, whose AccountName must be the source's
// account).
package policysource
