// A real FHIR R4 server on loopback for tests and the demo: FHIR Works on AWS routing and
// DynamoDB persistence, the table on a moto server. Loopback only: authorization is stubbed.
'use strict';

const AWS = require('aws-sdk');
const { stubs, BASE_R4_RESOURCES } = require('fhir-works-on-aws-interface');
const { generateServerlessRouter } = require('fhir-works-on-aws-routing');
const JsonSchemaValidator =
  require('fhir-works-on-aws-routing/lib/router/validation/jsonSchemaValidator').default;
const {
  DynamoDbDataService,
  DynamoDbBundleService,
} = require('fhir-works-on-aws-persistence-ddb');

const port = Number(process.env.FHIR_PORT);
const host = '127.0.0.1';
const serverUrl = `http://${host}:${port}`;
const fhirVersion = '4.0.1';

// aws-sdk v2 ignores AWS_ENDPOINT_URL: hand the moto endpoint to the client explicitly.
const dynamoDb = new AWS.DynamoDB({
  endpoint: process.env.AWS_ENDPOINT_URL,
  region: process.env.AWS_REGION || 'us-east-1',
});
const persistence = new DynamoDbDataService(dynamoDb);
const bundle = new DynamoDbBundleService(dynamoDb);

// FHIR Works searches through Elasticsearch, which does not run here: announce no search
// parameters in /metadata and refuse searches; reads by id and transactions do not need it.
const noSearch = {
  ...stubs.search,
  getCapabilities: async () => ({}),
};

const fhirConfig = {
  configVersion: 1,
  productInfo: { orgName: 'imaging-ai-pipeline local EHR' },
  // Loopback-only test server: every request is allowed (stubs.passThroughAuthz).
  auth: { authorization: stubs.passThroughAuthz, strategy: { service: 'OAuth' } },
  server: { url: serverUrl },
  validators: [new JsonSchemaValidator(fhirVersion)],
  profile: {
    fhirVersion,
    systemOperations: ['transaction'],
    bundle,
    systemSearch: noSearch,
    systemHistory: stubs.history,
    genericResource: {
      operations: ['create', 'read', 'update', 'delete', 'vread'],
      fhirVersions: [fhirVersion],
      persistence,
      typeSearch: noSearch,
      typeHistory: stubs.history,
    },
  },
};

const app = generateServerlessRouter(fhirConfig, BASE_R4_RESOURCES);
const server = app.listen(port, host, () => {
  process.stdout.write(`FHIR R4 server listening on ${serverUrl}\n`);
});

const shutdown = () => server.close(() => process.exit(0));
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
