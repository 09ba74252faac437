// A real Helia 7 peer for the dkvs IPFS interop tests. Loopback only: no bootstrap, no
// delegated routing, no HTTP gateways, no discovery; it talks only to the peers it is told to dial.
//
//   node --import ./polyfill.mjs helia-peer.mjs serve FILE [--timeout S]
//       adds FILE (UnixFS, Helia defaults: CIDv1, raw leaves, 1 MiB chunks), prints one line
//       {"peer":"<id>","addrs":["/ip4/127.0.0.1/tcp/N/p2p/<id>"],"cid":"<cid>"}
//       and serves it over bitswap until stdin closes, SIGTERM/SIGINT, or S seconds; exit 0.
//       A directory FILE is added whole with addAll (Helia's defaults; names starting with `.`
//       left out, as its globSource leaves them out, unless --hidden), and "cid" is the
//       directory's.
//   node --import ./polyfill.mjs helia-peer.mjs get ADDR CID[/PATH] OUT [--timeout S]
//       dials ADDR (a multiaddr ending in /p2p/<id>), fetches CID (the file at PATH under it),
//       writes its bytes to OUT and prints {"ok":true,"bytes":N}; on failure prints the error
//       on stderr and exits 1.
//
// stdout carries only that one JSON line; diagnostics go to stderr. Default timeout: 120 s.
import { createHeliaLight } from 'helia'
import { withLibp2pLight } from '@helia/libp2p'
import { withBitswap } from '@helia/bitswap'
import { unixfs } from '@helia/unixfs'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { kadDHT, passthroughMapper } from '@libp2p/kad-dht'
import { MemoryBlockstore } from 'blockstore-core'
import { MemoryDatastore } from 'datastore-core'
import { multiaddr } from '@multiformats/multiaddr'
import { CID } from 'multiformats/cid'
import { createReadStream, createWriteStream } from 'node:fs'
import { readdir, readFile, rm, stat } from 'node:fs/promises'
import { basename, join } from 'node:path'
import { pipeline } from 'node:stream/promises'
import { Readable } from 'node:stream'

const USAGE = 'usage: helia-peer.mjs serve FILE [--timeout S] | get ADDR CID OUT [--timeout S]'

function parseArgs (argv) {
  const pos = []
  let timeout = 120
  let hidden = false
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--hidden') hidden = true
    else if (argv[i] === '--timeout') {
      timeout = Number(argv[++i])
      if (!(timeout > 0)) throw new Error('--timeout needs a positive number of seconds')
    } else pos.push(argv[i])
  }
  const [cmd, ...rest] = pos
  if (!((cmd === 'serve' && rest.length === 1) || (cmd === 'get' && rest.length === 3))) throw new Error(USAGE)
  return { cmd, rest, timeoutMs: timeout * 1000, hidden }
}

async function startHelia () {
  const helia = withBitswap(withLibp2pLight(createHeliaLight({
    blockstore: new MemoryBlockstore(),
    datastore: new MemoryDatastore()
  }), {
    addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    peerDiscovery: [],
    services: {
      identify: identify(),
      ping: ping(),
      // The standard IPFS DHT protocol, so peers see a normal IPFS node; tests dial explicitly.
      dht: kadDHT({ protocol: '/ipfs/kad/1.0.0', clientMode: false, peerInfoMapper: passthroughMapper })
    }
  }))
  await helia.start()
  return helia
}

function fullAddrs (helia) {
  const id = helia.libp2p.peerId.toString()
  return helia.libp2p.getMultiaddrs().map(ma => {
    const s = ma.toString()
    return s.includes('/p2p/') ? s : `${s}/p2p/${id}`
  })
}

// The entries of the directory `dir` as addAll takes them, under `prefix`: a directory has
// no content; names in order, those starting with `.` left out.
async function * entriesOf (dir, prefix, hidden) {
  yield { path: prefix }
  const names = (await readdir(dir)).filter(n => hidden || !n.startsWith('.')).sort()
  for (const name of names) {
    const full = join(dir, name)
    if ((await stat(full)).isDirectory()) yield * entriesOf(full, `${prefix}/${name}`, hidden)
    else yield { path: `${prefix}/${name}`, content: await readFile(full) }
  }
}

async function serve (helia, file, timeoutMs, hidden) {
  const fs = unixfs(helia)
  let cid
  if ((await stat(file)).isDirectory()) {
    const root = basename(file)
    for await (const entry of fs.addAll(entriesOf(file, root, hidden))) {
      if (entry.path === root) cid = entry.cid
    }
    if (cid == null) throw new Error(`addAll made no entry ${root}`)
  } else {
    cid = await fs.addByteStream(createReadStream(file))
  }
  const peer = helia.libp2p.peerId.toString()
  process.stdout.write(JSON.stringify({ peer, addrs: fullAddrs(helia), cid: cid.toString() }) + '\n')
  await new Promise(resolve => {
    setTimeout(resolve, timeoutMs).unref()
    process.once('SIGTERM', resolve)
    process.once('SIGINT', resolve)
    process.stdin.once('end', resolve)
    process.stdin.once('close', resolve)
    process.stdin.once('error', resolve)
    process.stdin.resume()
  })
}

async function get (helia, addr, cidText, out, timeoutMs) {
  const signal = AbortSignal.timeout(timeoutMs)
  const [root, ...path] = cidText.split('/')
  const cid = CID.parse(root)
  let bytes = 0
  async function * counted () {
    const options = path.length > 0 ? { signal, path: path.join('/') } : { signal }
    for await (const chunk of unixfs(helia).cat(cid, options)) {
      bytes += chunk.byteLength
      yield chunk
    }
  }
  try {
    await helia.libp2p.dial(multiaddr(addr), { signal })
    await pipeline(Readable.from(counted()), createWriteStream(out))
  } catch (err) {
    await rm(out, { force: true })
    if (signal.aborted) throw new Error(`timed out after ${timeoutMs / 1000} s fetching ${cidText} from ${addr} (${err.message})`)
    throw err
  }
  process.stdout.write(JSON.stringify({ ok: true, bytes }) + '\n')
}

let args
try {
  args = parseArgs(process.argv.slice(2))
} catch (err) {
  console.error(err.message)
  process.exit(2)
}
// Hard bound whatever happens (a stuck stop included): the timeout plus a grace period.
setTimeout(() => {
  console.error(`helia-peer: still running ${args.timeoutMs / 1000 + 15} s after start, exiting`)
  process.exit(3)
}, args.timeoutMs + 15_000).unref()

let helia
let code = 0
try {
  helia = await startHelia()
  if (args.cmd === 'serve') await serve(helia, args.rest[0], args.timeoutMs, args.hidden)
  else await get(helia, ...args.rest, args.timeoutMs)
} catch (err) {
  console.error(`helia-peer ${args.cmd} failed: ${err?.stack ?? err}`)
  code = 1
}
try {
  await helia?.stop()
} catch (err) {
  console.error(`helia-peer: stop failed: ${err?.stack ?? err}`)
}
process.exit(code)
