// Validates Kubernetes manifests (multi-document YAML files given as
// arguments) offline against the schemas of kubernetes-models and
// @kubernetes-models/prometheus-operator and @kubernetes-models/cert-manager,
// and rejects unknown fields, which
// those schemas accept: every object is wrapped in a Proxy that records the
// properties the compiled validator looks at; a key it never reads, in an
// object whose keys it never enumerates (maps are enumerated), is unknown.
//
// Usage: node validate.mjs rendered.yaml...   (exit 1 on any problem)
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { pathToFileURL } from "node:url";
import YAML from "yaml";

function modulePath(apiVersion, kind) {
  const [group, version] = apiVersion.includes("/")
    ? apiVersion.split("/")
    : ["", apiVersion];
  // Resolved by path: the packages' "exports" maps hide per-kind modules.
  const root = join(dirname(new URL(import.meta.url).pathname), "node_modules");
  if (group === "monitoring.coreos.com") {
    return join(root, "@kubernetes-models/prometheus-operator", group, version,
                `${kind}.js`);
  }
  if (group === "cert-manager.io") {
    return join(root, "@kubernetes-models/cert-manager", group, version,
                `${kind}.js`);
  }
  return join(root, "kubernetes-models", group ? `${group}/${version}` : version,
              `${kind}.js`);
}

async function validatorFor(apiVersion, kind) {
  const path = modulePath(apiVersion, kind);
  const source = readFileSync(path, "utf8");
  const m = source.match(/from\s*"((?:\.\.\/)+_schemas\/[^"]+)"/);
  if (!m) throw new Error(`no schema import in ${path}`);
  const schema = await import(pathToFileURL(join(dirname(path), m[1])).href);
  return schema.validate;
}

function track(value, path, records) {
  if (Array.isArray(value)) {
    return value.map((v, i) => track(v, `${path}/${i}`, records));
  }
  if (value === null || typeof value !== "object") return value;
  const record = { path, keys: Object.keys(value), read: new Set(), enumerated: false };
  records.push(record);
  const inner = {};
  for (const k of Object.keys(value)) inner[k] = track(value[k], `${path}/${k}`, records);
  return new Proxy(inner, {
    get(target, key, receiver) {
      if (typeof key === "string") record.read.add(key);
      return Reflect.get(target, key, receiver);
    },
    has(target, key) {
      if (typeof key === "string") record.read.add(key);
      return Reflect.has(target, key);
    },
    ownKeys(target) {
      record.enumerated = true;
      return Reflect.ownKeys(target);
    },
  });
}

let problems = 0;
let checked = 0;
for (const file of process.argv.slice(2)) {
  const docs = YAML.parseAllDocuments(readFileSync(file, "utf8"));
  for (const doc of docs) {
    const obj = doc.toJSON();
    if (!obj) continue;
    const name = `${file}: ${obj.kind}/${obj.metadata?.name}`;
    let validate;
    try {
      validate = await validatorFor(obj.apiVersion, obj.kind);
    } catch (e) {
      console.error(`${name}: unknown apiVersion/kind ${obj.apiVersion} ${obj.kind}`);
      problems++;
      continue;
    }
    const records = [];
    const ok = validate(track(obj, "", records));
    if (!ok) {
      for (const err of validate.errors ?? []) {
        console.error(`${name}: ${err.instancePath || "/"} ${err.keyword} ${JSON.stringify(err.params)}`);
      }
      problems++;
    }
    const unknown = [];
    for (const r of records) {
      if (r.enumerated) continue;
      if (unknown.some((u) => r.path === u || r.path.startsWith(u + "/"))) continue;
      for (const key of r.keys) {
        if (!r.read.has(key)) unknown.push(`${r.path}/${key}`);
      }
    }
    for (const u of unknown) {
      console.error(`${name}: unknown field ${u}`);
      problems++;
    }
    checked++;
  }
}
console.log(`${checked} objects checked, ${problems} problems`);
process.exit(problems === 0 && checked > 0 ? 0 : 1);
