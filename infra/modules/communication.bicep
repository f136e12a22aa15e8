// Azure Communication Services (SMS + Email) with an Email Communication
// Service. The Azure-managed domain (<guid>.azurecomm.net) always exists and is
// linked; a custom domain is optional: create it with customEmailDomain, add the
// DNS records shown in the customEmailDomainVerificationRecords output, verify
// it in the portal, then redeploy with useCustomEmailDomain=true to link it and
// send from it.
//
// SMS numbers cannot be bought through ARM/Bicep: acquire one in the portal
// (Communication Services resource -> Phone numbers) and pass it as a parameter.

@description('Name of the Communication Services resource.')
param communicationServiceName string

@description('Name of the Email Communication Service resource.')
param emailServiceName string

@description('Where ACS stores data at rest (a geography, not a region), e.g. "United States", "Europe".')
param dataLocation string

@description('Tags for the resources.')
param tags object = {}

@description('Optional custom email domain (e.g. mail.example.com). Empty: only the Azure-managed domain.')
param customEmailDomain string = ''

@description('Link and send from the custom domain. Only set true once its DNS records are verified; linking an unverified domain fails.')
param useCustomEmailDomain bool = false

var hasCustomDomain = !empty(customEmailDomain)
var sendFromCustomDomain = hasCustomDomain && useCustomEmailDomain
// Every verified domain (Azure-managed or custom) comes with this sender username.
var senderUsername = 'DoNotReply'

resource emailService 'Microsoft.Communication/emailServices@2023-04-01' = {
  name: emailServiceName
  location: 'global'
  tags: tags
  properties: {
    dataLocation: dataLocation
  }
}

resource managedDomain 'Microsoft.Communication/emailServices/domains@2023-04-01' = {
  parent: emailService
  name: 'AzureManagedDomain'
  location: 'global'
  tags: tags
  properties: {
    domainManagement: 'AzureManaged'
    userEngagementTracking: 'Disabled'
  }
}

resource customDomain 'Microsoft.Communication/emailServices/domains@2023-04-01' = if (hasCustomDomain) {
  parent: emailService
  name: hasCustomDomain ? customEmailDomain : 'unused.invalid'
  location: 'global'
  tags: tags
  properties: {
    domainManagement: 'CustomerManaged'
    userEngagementTracking: 'Disabled'
  }
}

resource communicationService 'Microsoft.Communication/communicationServices@2023-04-01' = {
  name: communicationServiceName
  location: 'global'
  tags: tags
  properties: {
    dataLocation: dataLocation
    linkedDomains: sendFromCustomDomain ? [
      managedDomain.id
      customDomain.id
    ] : [
      managedDomain.id
    ]
  }
}

// customDomain is conditional (hasCustomDomain), so Bicep types it "resource | null"
// and a plain property read raises BCP318. Its id/name/type/apiVersion are exempt
// (compile-time values), properties are not:
//   * `!` where the surrounding condition implies the resource's condition
//     (sendFromCustomDomain = hasCustomDomain && useCustomEmailDomain);
//   * `.?` with `??` where a fallback value is wanted.
// ARM's if() evaluates only the branch it takes, so the custom domain is never
// read when it is not deployed.
var senderDomain = sendFromCustomDomain ? customDomain!.properties.mailFromSenderDomain : managedDomain.properties.mailFromSenderDomain

output communicationServiceName string = communicationService.name
output communicationServiceId string = communicationService.id
output endpoint string = 'https://${communicationService.properties.hostName}'
output mailFromSenderDomain string = senderDomain
output senderAddress string = '${senderUsername}@${senderDomain}'
output customEmailDomainVerificationRecords object = customDomain.?properties.verificationRecords ?? {}
