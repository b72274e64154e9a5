// Usage: node client.js HOST:PORT
// Watches grpc.health.v1 (the overall status) for its first answer and lists the services
// over grpc.reflection.v1; prints one JSON object, or exits 1 with the error.
"use strict";
const path = require("path");
const grpc = require("@grpc/grpc-js");
const loader = require("@grpc/proto-loader");

const address = process.argv[2];
const options = { keepCase: true, enums: String, defaults: true, oneofs: true };
const load = (file) =>
  grpc.loadPackageDefinition(loader.loadSync(path.join(__dirname, file), options));
const health = load("health.proto").grpc.health.v1;
const reflection = load("reflection.proto").grpc.reflection.v1;
const deadline = () => new Date(Date.now() + 10000);

function watch() {
  return new Promise((resolve, reject) => {
    const client = new health.Health(address, grpc.credentials.createInsecure());
    const call = client.Watch({ service: "" }, { deadline: deadline() });
    call.on("data", (answer) => {
      call.cancel();
      client.close();
      resolve(answer.status);
    });
    call.on("error", (err) => {
      if (err.code !== grpc.status.CANCELLED) reject(err);
    });
  });
}

function listServices() {
  return new Promise((resolve, reject) => {
    const client = new reflection.ServerReflection(address, grpc.credentials.createInsecure());
    const call = client.ServerReflectionInfo({ deadline: deadline() });
    call.on("data", (answer) => {
      client.close();
      if (answer.message_response !== "list_services_response") {
        reject(new Error(`unexpected answer ${JSON.stringify(answer)}`));
        return;
      }
      resolve(answer.list_services_response.service.map((s) => s.name));
    });
    call.on("error", reject);
    call.write({ list_services: "" });
    call.end();
  });
}

(async () => {
  const watched = await watch();
  const services = await listServices();
  process.stdout.write(JSON.stringify({ watch: watched, services }) + "\n");
})().catch((err) => {
  process.stderr.write(`${err.code ?? ""} ${err.details ?? err.message}\n`);
  process.exit(1);
});
