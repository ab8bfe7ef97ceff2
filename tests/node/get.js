// One GET through the gateway with Node's own `https` module, as README's Node.js row says:
// an HttpsProxyAgent for the proxy, and the gateway's CA either as the request's `ca:` option
// (GW_CA set) or from NODE_EXTRA_CA_CERTS. Prints {"status": ..., "body": ...} as one JSON line.
"use strict";
const fs = require("fs");
const https = require("https");
const { HttpsProxyAgent } = require("https-proxy-agent");

const [url] = process.argv.slice(2);
const options = { agent: new HttpsProxyAgent(process.env.GW_PROXY), timeout: 10000 };
if (process.env.GW_CA) options.ca = fs.readFileSync(process.env.GW_CA);

const request = https.get(url, options, (res) => {
  let body = "";
  res.setEncoding("utf8");
  res.on("data", (chunk) => { body += chunk; });
  res.on("end", () => {
    console.log(JSON.stringify({ status: res.statusCode, body }));
  });
});
request.on("timeout", () => request.destroy(new Error("timed out")));
request.on("error", (err) => {
  console.error(err.message);
  process.exit(1);
});
