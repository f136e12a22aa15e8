// Key Vault (RBAC mode) holding the two server secrets. The values come from
// @secure parameters supplied by the deployer (azd env / az CLI). They are NOT
// generated here: a value that changed on every deployment would make stored
// signing keys undecryptable (auth-signing-key-secret) and invalidate every
// live one-time code (auth-code-hash-key). See docs/deploy.md.

@description('Name of the Key Vault (3-24 characters).')
@minLength(3)
@maxLength(24)
param name string

@description('Azure region.')
param location string

@description('Tags for the resource.')
param tags object = {}

@description('Entra tenant of the vault.')
param tenantId string = subscription().tenantId

@description('Turn on purge protection (cannot be turned off again; blocks "azd down --purge").')
param enablePurgeProtection bool = false

@description('Base64 (or hex) key, at least 32 bytes, that hashes one-time codes (AUTH_CODE_HASH_KEY).')
@secure()
@minLength(44)
param codeHashKey string

@description('Base64 (or hex) key, at least 32 bytes, that encrypts stored signing keys (AUTH_SIGNING_KEY_SECRET).')
@secure()
@minLength(44)
param signingKeySecret string

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    // Purge protection can only be switched on; null leaves it off.
    enablePurgeProtection: enablePurgeProtection ? true : null
    enabledForDeployment: false
    enabledForDiskEncryption: false
    enabledForTemplateDeployment: false
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource codeHashKeyEntry 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'auth-code-hash-key'
  properties: {
    value: codeHashKey
    contentType: 'base64'
  }
}

resource signingKeyEntry 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'auth-signing-key-secret'
  properties: {
    value: signingKeySecret
    contentType: 'base64'
  }
}

output name string = vault.name
output id string = vault.id
output vaultUri string = vault.properties.vaultUri
// Versionless URIs: a Key Vault reference built from them follows the latest
// version, so rotation needs no redeployment (App Service refreshes references
// within 24 hours, or at once on any app-setting change or restart).
output codeHashKeyUri string = codeHashKeyEntry.properties.secretUri
output signingKeyUri string = signingKeyEntry.properties.secretUri
