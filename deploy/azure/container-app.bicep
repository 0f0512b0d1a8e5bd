// Azure Container Apps: the chio sidecar takes the app's ingress and
// forwards to the API container on loopback. Deploy with
//   az deployment group create -g RG -f deploy/azure/container-app.bicep \
//     -p environmentId=... signingKey=... controlToken=... policy=@policy.yaml openapi=@openapi.yaml
// The image runs as 65532:65532 (its USER); Container Apps offers no
// read-only root filesystem switch, and the sidecar writes only to the
// receipts volume. EmptyDir storage is lost with the replica: mount an Azure
// Files share at /var/lib/chio to keep receipts.
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
param policy string
param openapi string

resource app 'Microsoft.App/containerApps@2024-03-01' = {
  name: 'petstore-chio'
  location: location
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
        { name: 'chio-policy', value: policy }
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
            { name: 'CHIO_POLICY_SOURCE', value: '/etc/chio/policy.yaml' }
            { name: 'CHIO_RECEIPT_SINK', value: '/var/lib/chio/receipts.db' }
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
            { secretRef: 'chio-policy', path: 'policy.yaml' }
            { secretRef: 'chio-openapi', path: 'openapi.yaml' }
          ]
        }
      ]
    }
  }
}
