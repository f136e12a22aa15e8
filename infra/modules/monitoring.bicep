// Log Analytics workspace + workspace-based Application Insights with local
// (instrumentation-key) authentication disabled: telemetry is accepted only
// from Entra-authenticated senders (the app's identity holds Monitoring
// Metrics Publisher on the component, see roles.bicep).

@description('Name of the Log Analytics workspace.')
param logAnalyticsName string

@description('Name of the Application Insights component.')
param applicationInsightsName string

@description('Azure region.')
param location string

@description('Tags for the resources.')
param tags object = {}

@description('Days to keep logs in the workspace.')
@minValue(30)
@maxValue(730)
param retentionInDays int = 30

resource logAnalytics 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: logAnalyticsName
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: retentionInDays
  }
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: applicationInsightsName
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logAnalytics.id
    DisableLocalAuth: true
    publicNetworkAccessForIngestion: 'Enabled'
    publicNetworkAccessForQuery: 'Enabled'
  }
}

@description('Email address for the SMS-pumping alert (empty: the alert fires in Azure Monitor without a notification).')
param alertEmail string = ''

// SMS pumping (shared/security/limits.py): the app logs "pumping suspected" when it suspends SMS to a number prefix
// or country, and one "metric {...}" line per SMS sent and per SMS code verified. This log alert fires on a
// suspension, or when a country's SMS volume in the last hour is high while few codes are verified.
resource pumpingActionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = if (!empty(alertEmail)) {
  name: 'ag-${applicationInsightsName}-pumping'
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'smspumping'
    enabled: true
    emailReceivers: [
      {
        name: 'operator'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}

resource pumpingAlert 'Microsoft.Insights/scheduledQueryRules@2021-08-01' = {
  name: 'alert-${applicationInsightsName}-sms-pumping'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'SMS pumping suspected: high SMS volume, low verification'
    description: 'A number prefix or country was suspended by the app, or a country sent at least 50 SMS in the last hour with under 30% of their codes verified. See `python -m admin sends`.'
    severity: 1
    enabled: true
    evaluationFrequency: 'PT5M'
    windowSize: 'PT1H'
    scopes: [
      applicationInsights.id
    ]
    criteria: {
      allOf: [
        {
          query: 'let suspended = traces | where message startswith "pumping suspected" | project reason = message; let lowConversion = traces | where message startswith "metric " | extend m = parse_json(substring(message, 7)) | where tostring(m.metric) in ("sms_sent", "sms_verified") | summarize sent = countif(tostring(m.metric) == "sms_sent"), verified = countif(tostring(m.metric) == "sms_verified") by country = tostring(m.country) | where sent >= 50 and verified * 100 < sent * 30 | project reason = strcat("low SMS conversion in ", country, ": ", verified, " of ", sent, " verified"); union suspended, lowConversion'
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      // .id of a conditional resource is a compile-time value (no BCP318), and the
      // symbolic reference makes the alert wait for the action group; a resourceId()
      // string would not, and the rule could be created before its action group.
      actionGroups: empty(alertEmail) ? [] : [
        pumpingActionGroup.id
      ]
    }
  }
}

output applicationInsightsName string = applicationInsights.name
output applicationInsightsId string = applicationInsights.id
// Not a credential: with DisableLocalAuth the instrumentation key in it cannot
// be used to send telemetry without an Entra token.
output connectionString string = applicationInsights.properties.ConnectionString
output logAnalyticsName string = logAnalytics.name
