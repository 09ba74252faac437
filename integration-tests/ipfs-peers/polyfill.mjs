// Node 20 lacks Promise.withResolvers (Node 22 has it); libp2p 3 / Helia 7 call it.
// Load before anything else: node --import ./polyfill.mjs helia-peer.mjs ...
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function withResolvers () {
    let resolve, reject
    const C = typeof this === 'function' ? this : Promise
    const promise = new C((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}
