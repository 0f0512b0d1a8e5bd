// Azure Container Apps: the chio sidecar takes the app's ingress and
// forwards to the API container on loopback. Deploy with
//   az deployment group create -g RG -f deploy/azure/container-app.bicep \
//     -p environmentId=... storageAccount=... signingKey=... controlToken=... openapi=@openapi.yaml
// The image runs as 65532:65532 (its USER); Container Apps offers no
// read-only root filesystem switch, and the sidecar writes only to the
// receipts volume.
//
// The storage account (storageAccount, in this resource group) holds two
// blob containers: chio-config, with the policy at chio-config/policy.yaml
// (CHIO_POLICY_SOURCE azblob://ACCOUNT/chio-config/policy.yaml, watched for
// a new ETag: upload a new policy and the replicas reload it; one that does
// not load is refused and the old one stays), and chio-receipts, the
// segment sink every sealed batch of receipts is shipped to
// (CHIO_RECEIPT_SINK azblob://ACCOUNT/chio-receipts/petstore: one JSON
// lines object per checkpoint; docs/receipt-log.md). The app's
// system-assigned managed identity reads and writes them (Storage Blob Data
// Contributor on the account, assigned below); the SDK's
// DefaultAzureCredential finds it. `chio-agent receipts verify --sink
// azblob://ACCOUNT/chio-receipts/petstore` checks what the sink holds. The
// local receipt log (the first write of every receipt) is on EmptyDir
// storage, lost with the replica: receipts not yet shipped then go with it.
// The role assignment is made with the app: until it takes effect (minutes)
// the sidecar cannot read the policy and fails closed, and Container Apps
// restarts it.
// Sessions stay single-tier: replicas are not given one another as peers
// (CHIO_SESSION_PEERS / _PEERS_DNS), so a session's limits hold across
// replicas only with session affinity or one replica (docs/sessions.md,
// "Replicas").

param location string = resourceGroup().location
param environmentId string
param sidecarImage string = 'ghcr.io/backbay-labs/chio-sidecar:latest'
param apiImage string
@secure()
param signingKey string
@secure()
param controlToken string
param openapi string
@description('Storage account holding the chio-config (policy) and chio-receipts (receipt sink) blob containers')
param storageAccount string

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccount
}

// Storage Blob Data Contributor: read the policy, write and list receipt
// segments.
var blobDataContributor = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', 'ba92f5b4-2d11-453d-a403-e96b0029c9fe')

resource blobAccess 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, app.id, blobDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: blobDataContributor
    principalId: app.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

resource app 'Microsoft.App/containerApps@2024-03-01' = {
  name: 'petstore-chio'
  location: location
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    environmentId: environmentId
    configuration: {
      ingress: {
        external: true
        targetPort: 9090
        transport: 'http'
      }
      secrets: [
        { name: 'chio-signing-key', value: signingKey }
        { name: 'chio-control-token', value: controlToken }
        { name: 'chio-openapi', value: openapi }
      ]
    }
    template: {
      containers: [
        {
          name: 'chio-sidecar'
          image: sidecarImage
          args: [ 'api', 'protect', '--upstream', 'http://127.0.0.1:8080', '--spec', '/etc/chio/openapi.yaml' ]
          env: [
            { name: 'CHIO_LISTEN_ADDR', value: '0.0.0.0:9090' }
            { name: 'CHIO_HEALTH_PATH', value: '/chio/health' }
            { name: 'CHIO_POLICY_SOURCE', value: 'azblob://${storageAccount}/chio-config/policy.yaml' }
            { name: 'CHIO_RECEIPT_SINK', value: 'azblob://${storageAccount}/chio-receipts/petstore' }
            { name: 'CHIO_LOG_LEVEL', value: 'info' }
            { name: 'CHIO_SIGNING_KEY', secretRef: 'chio-signing-key' }
            { name: 'CHIO_SIDECAR_CONTROL_TOKEN', secretRef: 'chio-control-token' }
          ]
          resources: { cpu: json('0.5'), memory: '1Gi' }
          probes: [
            { type: 'Readiness', httpGet: { path: '/chio/health', port: 9090 }, periodSeconds: 10 }
            { type: 'Liveness', httpGet: { path: '/chio/live', port: 9090 }, periodSeconds: 10 }
          ]
          volumeMounts: [
            { volumeName: 'receipts', mountPath: '/var/lib/chio' }
            { volumeName: 'chio-config', mountPath: '/etc/chio' }
          ]
        }
        {
          name: 'api'
          image: apiImage
          env: [ { name: 'LISTEN_ADDR', value: '127.0.0.1:8080' } ]
          resources: { cpu: json('0.5'), memory: '1Gi' }
        }
      ]
      volumes: [
        { name: 'receipts', storageType: 'EmptyDir' }
        {
          name: 'chio-config'
          storageType: 'Secret'
          secrets: [
            { secretRef: 'chio-openapi', path: 'openapi.yaml' }
          ]
        }
      ]
    }
  }
}
