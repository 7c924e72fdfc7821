// Peer CSMS for the benchmarks: the npm package ocpp-rpc's RPCServer in strict mode (every request and response
// validated against its OCPP 2.0.1 / 2.1 schemas), answering what bench/csms_load.py sends, storing nothing.
// The same yardstick as bench/ocpp_bare_server.py, from another ecosystem: Node.js and the `ws` library.
//
//   npm ci --prefix bench/ocpp_rpc_server && node bench/ocpp_rpc_server/server.js --port 9200
//   -> prints "listening on ws://127.0.0.1:9200/ocpp/<station_id> pid=N" (--port 0 picks a free port)
'use strict';

const { RPCServer } = require('ocpp-rpc');

const HEARTBEAT_INTERVAL_S = 300;

function arg(name, fallback) {
    const at = process.argv.indexOf(name);
    return at >= 0 && at + 1 < process.argv.length ? process.argv[at + 1] : fallback;
}

const now = () => new Date().toISOString();

const server = new RPCServer({
    protocols: ['ocpp2.1', 'ocpp2.0.1'],
    strictMode: true,
});

// Refuse at the handshake like the other servers: the path must be /ocpp/<id> and the Basic-auth user the station id
// (ocpp-rpc hands over the password only when the user matches the identity).
server.auth((accept, reject, handshake) => {
    if (handshake.endpoint !== '/ocpp' || handshake.password === undefined) {
        reject(401, 'Basic auth with user = station id required');
        return;
    }
    accept({ stationId: handshake.identity });
});

server.on('client', (client) => {
    client.handle('BootNotification', () => ({ currentTime: now(), interval: HEARTBEAT_INTERVAL_S, status: 'Accepted' }));
    client.handle('Heartbeat', () => ({ currentTime: now() }));
    client.handle('StatusNotification', () => ({}));
    client.handle('MeterValues', () => ({}));
    client.handle('TransactionEvent', ({ params }) => (params.idToken ? { idTokenInfo: { status: 'Accepted' } } : {}));
});

async function main() {
    const host = arg('--host', '127.0.0.1');
    const port = Number(arg('--port', '9200'));
    const http = await server.listen(port, host);
    const bound = http.address().port;
    console.log(`listening on ws://${host}:${bound}/ocpp/<station_id> pid=${process.pid}`);
    const stop = async () => {
        await server.close({ awaitPending: false });
        process.exit(0);
    };
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
}

main().catch((err) => {
    console.error(err);
    process.exit(1);
});
