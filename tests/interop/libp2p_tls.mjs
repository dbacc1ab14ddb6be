// Independent libp2p TLS certificate checker/generator (js-libp2p's @libp2p/tls) for the interop test.
//
//   node libp2p_tls.mjs request.json
//
// request: {"verify": [{"der": "<hex>", "expected": "<PeerID>" | null}, ...], "generate": <count>}
// prints:  {"verified": [{"ok": true, "peerId": "..."} | {"ok": false, "error": "..."}, ...],
//           "generated": [{"peerId": "...", "der": "<hex>"}, ...]}
import { readFileSync } from 'node:fs'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey, peerIdFromString } from '@libp2p/peer-id'
// utils.js holds the certificate code; the package's exports map names it './utils'.
import { generateCertificate, verifyPeerCertificate } from '@libp2p/tls/utils'

function pemToDer (pem) {
  const body = pem.replace(/-----(BEGIN|END) CERTIFICATE-----/g, '').replace(/\s+/g, '')
  return Buffer.from(body, 'base64')
}

const request = JSON.parse(readFileSync(process.argv[2], 'utf8'))
const out = { verified: [], generated: [] }

for (const item of request.verify ?? []) {
  try {
    const expected = item.expected == null ? undefined : peerIdFromString(item.expected)
    const peerId = await verifyPeerCertificate(new Uint8Array(Buffer.from(item.der, 'hex')), expected)
    out.verified.push({ ok: true, peerId: peerId.toString() })
  } catch (err) {
    out.verified.push({ ok: false, error: `${err.name}: ${err.message}` })
  }
}

for (let i = 0; i < (request.generate ?? 0); i++) {
  const key = await generateKeyPair('secp256k1')
  const { cert } = await generateCertificate(key)
  out.generated.push({ peerId: peerIdFromPrivateKey(key).toString(), der: pemToDer(cert).toString('hex') })
}

process.stdout.write(JSON.stringify(out) + '\n')
