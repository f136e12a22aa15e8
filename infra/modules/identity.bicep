// User-assigned managed identity used by the Function App for everything:
// host storage, deployment package, app tables, ACS, Key Vault references and
// Application Insights. A user-assigned identity exists before the app does, so
// its role assignments can be in place before the app first starts.

@description('Name of the user-assigned managed identity.')
param name string

@description('Azure region.')
param location string

@description('Tags for the resource.')
param tags object = {}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output id string = identity.id
output name string = identity.name
output principalId string = identity.properties.principalId
output clientId string = identity.properties.clientId
