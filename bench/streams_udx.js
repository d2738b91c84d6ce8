// One side of bench/streams.py's UDX row: a udx-native stream under
// @hyperswarm/secret-stream on 127.0.0.1. Prints JSON lines as the Python sides do:
// {"ready": true} once bound, then the side's result.
//
//   node streams_udx.js recv|send BYTES LOCAL_PORT REMOTE_PORT
//
// Both packages come from the benchmark's own npm cache (NODE_PATH), never from Shoal.
'use strict'

const crypto = require('crypto')
const UDX = require('udx-native')
const SecretStream = require('@hyperswarm/secret-stream')

const [role, total, localPort, remotePort] = [
  process.argv[2], Number(process.argv[3]), Number(process.argv[4]), Number(process.argv[5])
]
const CHUNK = 256 * 1024
const now = () => Number(process.hrtime.bigint()) / 1e9 // CLOCK_MONOTONIC, as Python's

function report (fields) {
  const usage = process.resourceUsage()
  const cpu = (usage.userCPUTime + usage.systemCPUTime) / 1e6
  process.stdout.write(JSON.stringify({ role, peak_rss_kib: usage.maxRSS, cpu_s: cpu, ...fields }) + '\n')
}

const udx = new UDX()
const socket = udx.createSocket()
socket.bind(localPort, '127.0.0.1')
const raw = udx.createStream(role === 'send' ? 2 : 1)
raw.connect(socket, role === 'send' ? 1 : 2, remotePort, '127.0.0.1')
const secure = new SecretStream(role === 'send', raw)
const hash = crypto.createHash('sha256')
process.stdout.write(JSON.stringify({ ready: true }) + '\n')

function done () {
  secure.destroy()
  socket.close()
}

if (role === 'recv') {
  let received = 0
  let end = 0
  secure.on('data', (data) => {
    hash.update(data)
    received += data.length
    if (received >= total && !end) {
      end = now()
      report({ bytes: received, sha256: hash.digest('hex'), end })
      // The sender ends once this side's acknowledgements have reached it.
      setTimeout(done, 500)
    }
  })
  secure.on('error', () => {})
} else {
  const block = crypto.randomBytes(1 << 20)
  let sent = 0
  let index = 0
  let start = 0
  const write = () => {
    while (sent < total) {
      const size = Math.min(CHUNK, total - sent)
      const chunk = Buffer.allocUnsafe(size)
      const offset = (index * 4099) % ((1 << 20) - CHUNK)
      block.copy(chunk, 0, offset, offset + size)
      if (size >= 8) chunk.writeBigUInt64BE(BigInt(index), 0)
      index += 1
      sent += size
      hash.update(chunk)
      if (!secure.write(chunk)) {
        secure.once('drain', write)
        return
      }
    }
    secure.end()
  }
  secure.on('connect', () => {
    start = now()
    write()
  })
  secure.on('finish', () => {
    report({ bytes: sent, sha256: hash.digest('hex'), start })
  })
  secure.on('close', done)
  secure.on('error', () => {})
}
