// Function App on the Flex Consumption plan (FC1), running as the
// user-assigned identity. Host storage, deployment package, Key Vault
// references and Application Insights all authenticate with that identity:
// no keys or connection strings with secrets end up in app settings.

@description('Name of the Function App.')
param name string

@description('Name of the Flex Consumption plan.')
param planName string

@description('Azure region.')
param location string

@description('Tags for the plan.')
param tags object = {}

@description('Extra tags for the site (azd-service-name goes here).')
param siteTags object = {}

@description('Resource id of the user-assigned managed identity.')
param identityId string

@description('Client id of the user-assigned managed identity.')
param identityClientId string

@description('Python version of the Functions runtime.')
@allowed([
  '3.10'
  '3.11'
  '3.12'
])
param pythonVersion string

@description('Instance memory size in MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Maximum number of on-demand instances the app scales out to (per function group). 40-1000, the range in the Flex Consumption documentation and samples; see main.bicep.')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 100

@description('Always-ready instances for the HTTP trigger group (0 = scale to zero, cold starts possible).')
@minValue(0)
param alwaysReadyHttpInstances int = 0

@description('Blob endpoint of the storage account (host storage and deployment package), with trailing slash.')
param blobEndpoint string

@description('Queue endpoint of the storage account (host storage).')
param queueEndpoint string

@description('Table endpoint of the storage account (host storage).')
param tableEndpoint string

@description('Blob container holding the deployment package.')
param deploymentContainerName string

@description('Application Insights connection string.')
param applicationInsightsConnectionString string

@description('App settings of the application itself (AUTH_*), except AUTH_ISSUER which is derived from the host name here.')
param appSettings object

var hostSettings = {
  // Host storage (AzureWebJobsStorage) through the user-assigned identity: no AccountKey.
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  AzureWebJobsStorage__blobServiceUri: blobEndpoint
  AzureWebJobsStorage__queueServiceUri: queueEndpoint
  AzureWebJobsStorage__tableServiceUri: tableEndpoint
  // Application Insights with Entra authentication (local auth is disabled).
  APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsightsConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
}

// The token issuer is this app's own API base URL.
var issuerSettings = {
  AUTH_ISSUER: 'https://${site.properties.defaultHostName}/api'
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  name: name
  location: location
  tags: union(tags, siteTags)
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientCertEnabled: false
    keyVaultReferenceIdentity: identityId
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${blobEndpoint}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
        alwaysReady: alwaysReadyHttpInstances > 0 ? [
          {
            name: 'http'
            instanceCount: alwaysReadyHttpInstances
          }
        ] : []
      }
      runtime: {
        name: 'python'
        version: pythonVersion
      }
    }
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      // Platform CORS stays empty: the app answers CORS itself from
      // AUTH_CORS_ALLOWED_ORIGINS (platform CORS would shadow it).
      cors: {
        allowedOrigins: []
        supportCredentials: false
      }
    }
  }
}

// Whole-collection write: any setting not listed here is removed on deploy.
// Flex Consumption rejects FUNCTIONS_WORKER_RUNTIME / FUNCTIONS_EXTENSION_VERSION
// (the runtime comes from functionAppConfig), so they are not set.
resource settings 'Microsoft.Web/sites/config@2024-04-01' = {
  parent: site
  name: 'appsettings'
  properties: union(hostSettings, appSettings, issuerSettings)
  dependsOn: [
    scmCredentials
  ]
}

// Basic (username/password) publishing is off; deployments use Entra tokens.
resource ftpCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'scm'
  properties: {
    allow: false
  }
  // One write to the site at a time (concurrent config writes can conflict).
  dependsOn: [
    ftpCredentials
  ]
}

output name string = site.name
output id string = site.id
output defaultHostName string = site.properties.defaultHostName
output uri string = 'https://${site.properties.defaultHostName}'
output apiBaseUrl string = 'https://${site.properties.defaultHostName}/api'
