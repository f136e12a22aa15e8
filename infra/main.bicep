// Native-auth backend: Function App (Flex Consumption, Python) + Table Storage
// + Azure Communication Services (SMS + Email) + Key Vault + Application
// Insights, all reached through one user-assigned managed identity.
//
// Scope: resource group. One template serves both documented routes:
//   * azd up                       (azd asks for / creates the resource group)
//   * az deployment group create   (plain CLI into an existing resource group)
// A subscription-scoped template would also create the group, but it could no
// longer be deployed with "az deployment group create".

targetScope = 'resourceGroup'

// ---- azd conventions --------------------------------------------------------

@minLength(1)
@maxLength(64)
@description('Name of the environment (azd: AZURE_ENV_NAME); seeds resource names and tags.')
param environmentName string

@minLength(1)
@description('Region of the resources; must offer the Flex Consumption plan.')
@metadata({
  azd: {
    type: 'location'
  }
})
param location string = resourceGroup().location

@description('Object id of the deploying user (azd: AZURE_PRINCIPAL_ID). Gets data access to tables/blobs and Key Vault Secrets Officer. Empty: no developer role assignments.')
param principalId string = ''

@description('Kind of principal in principalId (use ServicePrincipal when deploying from CI).')
@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
param principalType string = 'User'

// ---- server secrets (supply once, keep stable) -----------------------------

@secure()
@minLength(44)
@description('AUTH_CODE_HASH_KEY: base64 key (>= 32 bytes) hashing one-time codes. Generate ONCE, e.g. openssl rand -base64 48, and pass the same value on every deployment.')
param authCodeHashKey string

@secure()
@minLength(44)
@description('AUTH_SIGNING_KEY_SECRET: base64 key (>= 32 bytes) encrypting stored token-signing keys. Generate ONCE and pass the same value on every deployment; a new value makes stored signing keys unreadable.')
param authSigningKeySecret string

// ---- application ------------------------------------------------------------

// Azure table names must match ^[A-Za-z][A-Za-z0-9]{2,62}$ and the app's tables
// are tablePrefix + each of tableSuffixes (below). Bicep cannot check a pattern,
// only lengths, so:
//   max 54 = 63 - len('signinlog'), the longest suffix;
//   min 1  : every suffix has at least 4 letters, so one letter already gives a
//            valid 5+ character name.
// The characters (a letter, then letters/digits) are checked by the app at start
// (shared/settings.py) and by tests/test_infra.py for the default. Adding a longer
// suffix lowers the maximum; the test recomputes both bounds from tableSuffixes.
@minLength(1)
@maxLength(54)
@description('Prefix of the app table names (AUTH_TABLE_PREFIX): a letter followed by letters or digits (A-Z, a-z, 0-9; no hyphens or underscores), 1 to 54 characters. Table names are the prefix plus a suffix (longest: signinlog) and must match ^[A-Za-z][A-Za-z0-9]{2,62}$, so 54 + 9 = 63 is the longest allowed.')
param tablePrefix string = 'nativeauth'

@description('Tenant id put into issued tokens (AUTH_TENANT_ID).')
param authTenantId string = subscription().tenantId

@description('Comma-separated origins allowed by the app CORS handling (AUTH_CORS_ALLOWED_ORIGINS), e.g. https://app.example.com. Empty: no browser origins.')
param corsAllowedOrigins string = ''

@description('Answer sign-in/sign-up/reset requests identically for unknown accounts (AUTH_ENUMERATION_PROTECTION).')
param enumerationProtection bool = true

@description('Product name used in email and SMS texts (AUTH_APP_NAME).')
param appDisplayName string = 'Native Auth'

@description('E.164 SMS sender number bought in the portal (ACS resource -> Phone numbers), e.g. +18005550100 (AUTH_SMS_SENDER). Empty: SMS delivery is not configured.')
param smsSenderNumber string = ''

// ---- Communication Services --------------------------------------------------

@description('Data location (geography) of Communication Services, e.g. United States, Europe, UK, Australia.')
param communicationDataLocation string = 'United States'

@description('Optional custom email domain (e.g. mail.example.com). Empty: the Azure-managed domain only.')
param customEmailDomain string = ''

@description('Send from the custom email domain. Set true only after its DNS records are verified.')
param useCustomEmailDomain bool = false

// ---- hosting -----------------------------------------------------------------

@description('Flex Consumption instance memory (MB).')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

// 40..1000 is the range the Flex Consumption documentation gave for the maximum
// instance count ("the lowest maximum instance count value is 40, and the highest
// supported maximum instance count value is 1000", Learn: Event-driven scaling in
// Azure Functions, "Limit scale-out") and the range Microsoft's Flex Consumption
// Bicep samples declare. Newer revisions of that page give 1 as the lowest value;
// every value in 40..1000 is accepted under both. tests/test_infra.py checks both
// declarations (here and modules/functionapp.bicep) and the default in
// main.parameters.json.
@description('Flex Consumption maximum instance count (per function group; always-ready instances do not count). 40-1000: 1000 is the documented ceiling, 40 the lowest maximum given by the Flex Consumption docs and Microsoft samples (valid on every documented version of the platform). The regional memory quota may stop scale-out earlier.')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 100

@description('Always-ready instances for HTTP functions (0 = scale to zero; > 0 avoids cold starts at a fixed cost).')
@minValue(0)
@maxValue(1000)
param alwaysReadyHttpInstances int = 0

@description('Storage account redundancy.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_RAGRS'
  'Standard_GZRS'
  'Standard_RAGZRS'
])
param storageSkuName string = 'Standard_LRS'

@description('Email address for the SMS-pumping alert (empty: the alert fires in Azure Monitor without a notification).')
param alertEmail string = ''

@description('Turn on Key Vault purge protection (irreversible).')
param keyVaultPurgeProtection bool = false

@description('Optional explicit Function App name (globally unique). Empty: derived from the environment.')
param functionAppName string = ''

// ---- names -------------------------------------------------------------------

var resourceToken = toLower(uniqueString(subscription().id, resourceGroup().id, environmentName))
var tags = {
  'azd-env-name': environmentName
}
var appName = !empty(functionAppName) ? functionAppName : 'func-nativeauth-${resourceToken}'

// The app runs on this Python version (must match the project's interpreter;
// tests/test_infra.py checks it).
var pythonVersion = '3.11'

// Tables the app uses: AUTH_TABLE_PREFIX + suffix.
var tableSuffixes = [
  'flows'
  'users'
  'refresh'
  'keys'
  'limits'
  'clients'
  'policies'
  'signinlog'
]
var tableNames = [for suffix in tableSuffixes: '${tablePrefix}${suffix}']

var deploymentContainerName = 'deploymentpackage'

// ---- resources ---------------------------------------------------------------

module identity 'modules/identity.bicep' = {
  name: 'identity'
  params: {
    name: 'id-nativeauth-${resourceToken}'
    location: location
    tags: tags
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    logAnalyticsName: 'log-nativeauth-${resourceToken}'
    applicationInsightsName: 'appi-nativeauth-${resourceToken}'
    location: location
    tags: tags
    alertEmail: alertEmail
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  params: {
    name: 'stna${resourceToken}'
    location: location
    tags: tags
    skuName: storageSkuName
    deploymentContainerName: deploymentContainerName
    tableNames: tableNames
  }
}

module communication 'modules/communication.bicep' = {
  name: 'communication'
  params: {
    communicationServiceName: 'acs-nativeauth-${resourceToken}'
    emailServiceName: 'ecs-nativeauth-${resourceToken}'
    dataLocation: communicationDataLocation
    tags: tags
    customEmailDomain: customEmailDomain
    useCustomEmailDomain: useCustomEmailDomain
  }
}

module keyVault 'modules/keyvault.bicep' = {
  name: 'keyvault'
  params: {
    name: 'kv-na-${resourceToken}'
    location: location
    tags: tags
    enablePurgeProtection: keyVaultPurgeProtection
    codeHashKey: authCodeHashKey
    signingKeySecret: authSigningKeySecret
  }
}

module roles 'modules/roles.bicep' = {
  name: 'roles'
  params: {
    appPrincipalId: identity.outputs.principalId
    developerPrincipalId: principalId
    developerPrincipalType: principalType
    storageAccountName: storage.outputs.name
    communicationServiceName: communication.outputs.communicationServiceName
    keyVaultName: keyVault.outputs.name
    applicationInsightsName: monitoring.outputs.applicationInsightsName
  }
}

module functionApp 'modules/functionapp.bicep' = {
  name: 'functionapp'
  // Roles first: the platform reads the deployment package and resolves the
  // Key Vault references with the identity as soon as the app exists.
  dependsOn: [
    roles
  ]
  params: {
    name: appName
    planName: 'plan-nativeauth-${resourceToken}'
    location: location
    tags: tags
    siteTags: {
      'azd-service-name': 'api'
    }
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    pythonVersion: pythonVersion
    instanceMemoryMB: instanceMemoryMB
    maximumInstanceCount: maximumInstanceCount
    alwaysReadyHttpInstances: alwaysReadyHttpInstances
    blobEndpoint: storage.outputs.blobEndpoint
    queueEndpoint: storage.outputs.queueEndpoint
    tableEndpoint: storage.outputs.tableEndpoint
    deploymentContainerName: storage.outputs.deploymentContainerName
    applicationInsightsConnectionString: monitoring.outputs.connectionString
    // Exactly the settings the app reads (shared/settings.py SETTING_NAMES);
    // AUTH_ISSUER is added by the module from the app's host name.
    appSettings: {
      AUTH_ENVIRONMENT: 'azure'
      AUTH_STORAGE_TABLE_ENDPOINT: storage.outputs.tableEndpoint
      AUTH_STORAGE_CLIENT_ID: identity.outputs.clientId
      AUTH_TABLE_PREFIX: tablePrefix
      AUTH_TENANT_ID: authTenantId
      AUTH_CODE_HASH_KEY: '@Microsoft.KeyVault(SecretUri=${keyVault.outputs.codeHashKeyUri})'
      AUTH_SIGNING_KEY_SECRET: '@Microsoft.KeyVault(SecretUri=${keyVault.outputs.signingKeyUri})'
      AUTH_CORS_ALLOWED_ORIGINS: corsAllowedOrigins
      AUTH_ENUMERATION_PROTECTION: enumerationProtection ? 'true' : 'false'
      AUTH_DELIVERY: 'acs'
      AUTH_ACS_ENDPOINT: communication.outputs.endpoint
      AUTH_ACS_CLIENT_ID: identity.outputs.clientId
      AUTH_EMAIL_SENDER: communication.outputs.senderAddress
      AUTH_SMS_SENDER: smsSenderNumber
      AUTH_APP_NAME: appDisplayName
    }
  }
}

// ---- outputs (azd writes these into .azure/<env>/.env) ------------------------

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = resourceGroup().name
output AZURE_FUNCTION_APP_NAME string = functionApp.outputs.name
output SERVICE_API_NAME string = functionApp.outputs.name
output SERVICE_API_URI string = functionApp.outputs.uri
output API_BASE_URL string = functionApp.outputs.apiBaseUrl
output EMAIL_SENDER_ADDRESS string = communication.outputs.senderAddress
output EMAIL_SENDER_DOMAIN string = communication.outputs.mailFromSenderDomain
output CUSTOM_EMAIL_DOMAIN_VERIFICATION_RECORDS object = communication.outputs.customEmailDomainVerificationRecords
output AZURE_COMMUNICATION_SERVICE_NAME string = communication.outputs.communicationServiceName
output AZURE_COMMUNICATION_SERVICE_ENDPOINT string = communication.outputs.endpoint
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output AZURE_STORAGE_TABLE_ENDPOINT string = storage.outputs.tableEndpoint
output AZURE_TABLE_PREFIX string = tablePrefix
output AZURE_KEY_VAULT_NAME string = keyVault.outputs.name
output AZURE_KEY_VAULT_URI string = keyVault.outputs.vaultUri
output AZURE_USER_ASSIGNED_IDENTITY_CLIENT_ID string = identity.outputs.clientId
output APPLICATIONINSIGHTS_NAME string = monitoring.outputs.applicationInsightsName
