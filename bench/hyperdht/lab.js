// HyperDHT's side of the first-contact comparison (bench/first_contact.py runs it in
// the NAT lab). Every mode prints JSON lines on stdout.
//
//   node lab.js testnet HOST PORT SIZE     a small DHT of SIZE persistent nodes
//   node lab.js server HOST:PORT           an echo server on a fresh key pair
//   node lab.js client HOST:PORT PUBKEY    dial PUBKEY, send one message, time it

const DHT = require('hyperdht')

const now = () => Number(process.hrtime.bigint()) / 1e6
const say = (event, fields) => console.log(JSON.stringify({ event, ...fields }))

function bootstrapOf (where) {
  const [host, port] = where.split(':')
  return [{ host, port: Number(port) }]
}

async function testnet (host, port, size) {
  const nodes = []
  const first = new DHT({ ephemeral: false, firewalled: false, bootstrap: [], port, host: '0.0.0.0' })
  await first.fullyBootstrapped()
  nodes.push(first)
  const bootstrap = [{ host, port }]
  while (nodes.length < size) {
    const node = new DHT({ ephemeral: false, firewalled: false, bootstrap, host: '0.0.0.0' })
    await node.fullyBootstrapped()
    nodes.push(node)
  }
  say('ready', { bootstrap: `${host}:${port}`, nodes: nodes.length })
}

async function server (where) {
  const dht = new DHT({ bootstrap: bootstrapOf(where) })
  const keyPair = DHT.keyPair()
  const echo = dht.createServer((socket) => {
    socket.on('data', (data) => socket.write(data))
    socket.on('error', () => {})
  })
  await echo.listen(keyPair)
  say('ready', { public_key: keyPair.publicKey.toString('hex') })
}

async function client (where, publicKey) {
  const started = now()
  const dht = new DHT({ bootstrap: bootstrapOf(where) })
  await dht.fullyBootstrapped()
  const dialed = now()
  const socket = dht.connect(Buffer.from(publicKey, 'hex'))
  const timer = setTimeout(() => {
    say('error', { message: 'no stream within 30 s' })
    process.exit(1)
  }, 30000)
  socket.on('error', (err) => {
    say('error', { message: String(err && err.message) })
    process.exit(1)
  })
  socket.on('open', () => {
    const opened = now()
    socket.write(Buffer.from('across the NATs'))
    socket.once('data', () => {
      clearTimeout(timer)
      const echoed = now()
      say('delivered', {
        start_to_open_ms: opened - started,
        dial_to_open_ms: opened - dialed,
        dial_to_echo_ms: echoed - dialed,
        start_to_echo_ms: echoed - started
      })
      process.exit(0)
    })
  })
}

const [mode, ...args] = process.argv.slice(2)
if (mode === 'testnet') testnet(args[0], Number(args[1]), Number(args[2]))
else if (mode === 'server') server(args[0])
else if (mode === 'client') client(args[0], args[1])
else {
  console.error('usage: node lab.js testnet|server|client ...')
  process.exit(2)
}
